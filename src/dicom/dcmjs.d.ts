// dcmjs ships no type declarations; the project uses it only as an independent reader in
// tests and as the benchmark baseline (docs/decisions.md), so a loose declaration is enough.
declare module 'dcmjs' {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const dcmjs: any;
  export default dcmjs;
}

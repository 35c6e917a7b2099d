#!/usr/bin/env node
// `npm run demo`: the main job on a fresh Debian machine, right after cloning.
//  1. installs the npm dependencies and builds, when needed;
//  2. installs Orthanc with its DICOMweb plugin (Debian packages) when absent, as root;
//  3. starts Orthanc on loopback with its own storage under var/demo, and loads synthetic
//     studies full of fake PHI that the repository generates itself;
//  4. starts the gateway in front of it (two clients with different policies) and prints
//     curl lines that show the same data before (PACS) and after (gateway).
// Ctrl-C stops both.
import { execSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const sh = (cmd) => execSync(cmd, { cwd: root, stdio: 'inherit' });
const has = (bin) => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;

if (!existsSync(join(root, 'node_modules/.package-lock.json'))) sh('npm ci --no-audit --no-fund');
sh('node scripts/ensure-build.mjs');

if (!has('Orthanc') || !existsSync('/usr/share/orthanc/plugins/libOrthancDicomWeb.so')) {
  if (process.getuid?.() === 0 && has('apt-get')) {
    sh('apt-get update -qq');
    sh('DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb');
  } else {
    console.error('npm run demo: Orthanc is not installed; run: sudo apt-get install -y orthanc orthanc-dicomweb');
    process.exit(1);
  }
}

const { startOrthanc } = await import(join(root, 'dist/test/helpers/orthanc.js'));
const { generateFixtures } = await import(join(root, 'dist/test/fixtures/generate.js'));
const { validateConfig } = await import(join(root, 'dist/src/config/schema.js'));
const { startGateway } = await import(join(root, 'dist/src/main.js'));

const demo = join(root, 'var/demo');
mkdirSync(demo, { recursive: true });
console.log('starting Orthanc (loopback) and loading synthetic studies with fake PHI…');
const orthanc = await startOrthanc();
const fx = join(demo, 'studies');
const manifest = await generateFixtures(fx, { seed: 2026 });
await orthanc.upload(manifest.files.map((f) => join(fx, f.file)));

const tokens = { 'acme-ai': 'acme-demo-token', 'beta-labs': 'beta-demo-token' };
const sha = (t) => createHash('sha256').update(t).digest('hex');
const port = Number(process.env.PORT ?? 8080);
const raw = {
  server: { host: '127.0.0.1', port },
  upstream: { url: orthanc.dicomWebUrl },
  state: { dir: join(demo, 'state') },
  clients: [
    { id: 'acme-ai', apiKeySha256: sha(tokens['acme-ai']), profile: { options: [] } },
    { id: 'beta-labs', apiKeySha256: sha(tokens['beta-labs']), policyId: 'beta-dates', profile: { options: ['retainLongitudinalModifiedDates', 'cleanDescriptors', 'retainPatientCharacteristics'] } },
  ],
};
const cfgFile = join(demo, 'gateway.yaml');
writeFileSync(cfgFile, `# written by npm run demo\n${JSON.stringify(raw, null, 2)}\n`);
const gw = await startGateway(validateConfig(raw, cfgFile));

const ct = manifest.files.find((f) => f.kind === 'ct');
console.log(`
PACS (direct, identifying):   ${orthanc.dicomWebUrl}
Gateway (de-identifying):     ${gw.url}/dicom-web   config: ${cfgFile}

Before — the PACS answers with names, IDs and dates:
  curl -s '${orthanc.dicomWebUrl}/studies?includefield=all' | head -c 600; echo

After — acme-ai (Basic Profile) sees pseudonyms, no names, no dates:
  curl -s -H 'Authorization: Bearer ${tokens['acme-ai']}' '${gw.url}/dicom-web/studies?includefield=all' | head -c 600; echo

After — beta-labs (dates shifted per patient, descriptions cleaned) sees other pseudonyms:
  curl -s -H 'Authorization: Bearer ${tokens['beta-labs']}' '${gw.url}/dicom-web/studies?includefield=00080020,00081030' | head -c 600; echo

Retrieve a study as a vendor would (multipart/related of de-identified Part 10):
  S=$(curl -s -H 'Authorization: Bearer ${tokens['acme-ai']}' '${gw.url}/dicom-web/studies?ModalitiesInStudy=CT' | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[0]["0020000D"].Value[0]))')
  curl -s -H 'Authorization: Bearer ${tokens['acme-ai']}' "${gw.url}/dicom-web/studies/$S" -o study.multipart; ls -l study.multipart

No token, or an identifying query:
  curl -s '${gw.url}/dicom-web/studies'; echo
  curl -s -H 'Authorization: Bearer ${tokens['acme-ai']}' '${gw.url}/dicom-web/studies?PatientName=*'; echo

Preview offline, attribute by attribute, exactly what acme-ai receives:
  node dist/src/cli/main.js deid --config ${cfgFile} --client acme-ai ${join(fx, ct.file)} --out var/demo/out --diff

Ctrl-C stops the demo.`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await gw.close();
  await orthanc.stop();
  process.exit(0);
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);

/**
 * What can be linted of deploy/ on this machine (no Docker, no cluster): the Dockerfile's
 * shape, the compose file and Kubernetes manifests as YAML with the properties operations
 * relies on, and the bundled gateway configuration against the product's own validation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseAllDocuments, parse } from 'yaml';
import { validateConfig } from '../../../src/config/schema.js';

const read = (p: string): string => readFileSync(new URL(`../../../deploy/${p}`, import.meta.url), 'utf8');

test('Dockerfile: multi-stage, non-root, a state volume, a health check, SIGTERM', () => {
  const d = read('Dockerfile');
  assert.equal((d.match(/^FROM /gm) ?? []).length, 2, 'two stages');
  assert.match(d, /^USER node$/m);
  assert.match(d, /^HEALTHCHECK .*\n\s+CMD \["node", "-e", ".*\/healthz/m);
  assert.match(d, /^VOLUME \["\/var\/lib\/deid-gateway"\]$/m);
  assert.match(d, /^STOPSIGNAL SIGTERM$/m);
  assert.match(d, /npm prune --omit=dev/);
  assert.ok(!/^COPY (test|bench)/m.test(d), 'no tests or benchmarks in the image');
});

test('compose: two read-only replicas on PostgreSQL, dropped capabilities, the PACS and the database on an internal network', () => {
  const c = parse(read('compose.yaml'), { merge: true }) as { services: Record<string, Record<string, unknown>>; networks: Record<string, { internal?: boolean }> };
  for (const name of ['gateway-a', 'gateway-b']) {
    const g = c.services[name]!;
    assert.equal(g.read_only, true, name);
    assert.deepEqual(g.cap_drop, ['ALL'], name);
    assert.ok((g.volumes as string[]).some((v) => v.includes('master.key')), `${name}: the shared master key`);
  }
  assert.deepEqual(c.services.postgres!.networks, ['pacs']);
  const cfg = validateConfig(parse(read('compose-gateway.yaml')), '/etc/deid-gateway/gateway.yaml');
  assert.match(cfg.state.store ?? '', /^postgres:\/\/deid@postgres:5432\/deid$/, 'no password in the URL');
  assert.equal(cfg.state.storePasswordFile, '/run/secrets/pg-password', 'the password from the compose secret');
  for (const name of ['gateway-a', 'gateway-b']) assert.deepEqual(c.services[name]!.secrets, ['pg-password'], `${name} gets the database password secret`);
  assert.deepEqual(c.services.orthanc!.networks, ['pacs']);
  assert.equal(c.networks.pacs!.internal, true);
  assert.equal(c.services.orthanc!.ports, undefined, 'the PACS publishes no port');
});

test('Kubernetes: probes, non-root, read-only root, the master key from a secret, one writer of the state', () => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- walking an untyped manifest
  const docs = parseAllDocuments(read('kubernetes/deid-gateway.yaml')).map((d) => d.toJS() as Record<string, any>);
  const kinds = docs.map((d) => d.kind);
  for (const k of ['Deployment', 'Service', 'PersistentVolumeClaim', 'NetworkPolicy']) assert.ok(kinds.includes(k), k);
  const dep = docs.find((d) => d.kind === 'Deployment')!;
  const pod = dep.spec.template.spec;
  const c = pod.containers[0];
  assert.equal(dep.spec.replicas, 1);
  assert.equal(dep.spec.strategy.type, 'Recreate');
  assert.equal(pod.securityContext.runAsNonRoot, true);
  assert.equal(c.securityContext.readOnlyRootFilesystem, true);
  assert.deepEqual(c.securityContext.capabilities.drop, ['ALL']);
  assert.equal(c.livenessProbe.httpGet.path, '/healthz');
  assert.equal(c.readinessProbe.httpGet.path, '/readyz');
  const keyMount = c.volumeMounts.find((m: { name: string }) => m.name === 'master-key');
  assert.equal(keyMount.mountPath, '/var/lib/deid-gateway/master.key');
  assert.equal(pod.volumes.find((v: { name: string }) => v.name === 'master-key').secret.secretName, 'deid-gateway-master-key');
  assert.ok(pod.terminationGracePeriodSeconds >= 30, 'time to drain');
});

test('Kubernetes, replicated: a StatefulSet with a volume per pod for its audit trail, a disruption budget', () => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- walking an untyped manifest
  const docs = parseAllDocuments(read('kubernetes/deid-gateway-replicated.yaml')).map((d) => d.toJS() as Record<string, any>);
  const ss = docs.find((d) => d.kind === 'StatefulSet')!;
  assert.ok(ss.spec.replicas >= 2);
  assert.equal(ss.spec.volumeClaimTemplates[0].metadata.name, 'state');
  assert.equal(ss.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem, true);
  assert.ok(docs.some((d) => d.kind === 'PodDisruptionBudget'));
});

test('the bundled configuration is valid and keeps its state where the volumes are', () => {
  const cfg = validateConfig(parse(read('gateway.yaml')), '/etc/deid-gateway/gateway.yaml');
  assert.equal(cfg.state.dir, '/var/lib/deid-gateway');
  assert.equal(cfg.server.port, 8080);
  assert.equal(cfg.metrics?.port, 9464);
});

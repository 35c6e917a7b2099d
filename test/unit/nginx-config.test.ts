/**
 * bench:gateway's reference hop (bench/nginx.ts): the nginx configuration it writes is valid for
 * the nginx this machine has (`nginx -t`), says what the benchmark claims (keep-alive upstream,
 * 256 KiB buffers, never a temporary file), and a broken one is caught by the same check.
 * .ci/run installs Debian nginx-light.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nginxBinary, nginxConfig, testNginxConfig, writeNginxConfig } from '../../bench/nginx.js';

describe('the nginx reference of bench:gateway', () => {
  const bin = nginxBinary();

  test('nginx is installed (Debian nginx-light)', () => {
    assert.ok(bin, 'nginx not found: apt-get install nginx-light');
  });

  test('its configuration passes nginx -t, and a broken one does not', () => {
    const prefix = mkdtempSync(join(tmpdir(), 'nginx-conf-'));
    try {
      const file = writeNginxConfig({ prefix, listenPort: 18080, upstream: '127.0.0.1:8042', asRoot: process.getuid?.() === 0 });
      const ok = testNginxConfig(bin!, prefix, file);
      assert.ok(ok.ok, ok.output);
      writeFileSync(file, nginxConfig({ prefix, listenPort: 18080, upstream: '127.0.0.1:8042' }).replace('proxy_buffer_size 256k;', 'proxy_buffer_sized 256k;'));
      const bad = testNginxConfig(bin!, prefix, file);
      assert.ok(!bad.ok, 'an unknown directive is refused');
      assert.match(bad.output, /unknown directive "proxy_buffer_sized"/);
    } finally {
      rmSync(prefix, { recursive: true, force: true });
    }
  });

  test('it proxies with keep-alive upstream connections and 256 KiB buffers, never to disk', () => {
    const c = nginxConfig({ prefix: '/p', listenPort: 1, upstream: 'h:2' });
    for (const line of ['keepalive 64;', 'proxy_http_version 1.1;', 'proxy_set_header Connection "";', 'proxy_buffer_size 256k;', 'proxy_buffers 8 256k;', 'proxy_max_temp_file_size 0;', 'server h:2;', 'listen 127.0.0.1:1;']) {
      assert.ok(c.includes(line), line);
    }
  });
});

/**
 * nginx as the reference hop of bench:gateway (issue 14): what a C proxy costs on this machine,
 * measured in the same run as direct, the plain Node proxy and the gateway. Debian
 * `nginx-light`, `proxy_pass` to the PACS with keep-alive upstream connections and 256 KiB
 * buffers (the configuration the issue measured). test/unit/nginx-config.test.ts keeps the
 * configuration valid (`nginx -t`).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Where Debian installs nginx, or undefined. */
export function nginxBinary(): string | undefined {
  for (const p of ['/usr/sbin/nginx', '/usr/bin/nginx']) if (existsSync(p)) return p;
  const w = spawnSync('which', ['nginx'], { encoding: 'utf8' });
  return w.status === 0 ? w.stdout.trim() || undefined : undefined;
}

/**
 * The configuration: one worker, no access log, everything under `prefix` (temp files, pid, error
 * log), `proxy_pass` to `upstream` (host:port) over HTTP/1.1 keep-alive connections, responses
 * buffered in memory up to 2 MiB (256 KiB buffers), never to disk.
 */
export function nginxConfig(o: { prefix: string; listenPort: number; upstream: string; asRoot?: boolean }): string {
  return `# deid-gateway bench:gateway reference hop (bench/nginx.ts)
${o.asRoot ? 'user root;\n' : ''}worker_processes 1;
daemon off;
pid ${o.prefix}/nginx.pid;
error_log ${o.prefix}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${o.prefix}/tmp/body;
  proxy_temp_path ${o.prefix}/tmp/proxy;
  fastcgi_temp_path ${o.prefix}/tmp/fastcgi;
  keepalive_timeout 60s;
  keepalive_requests 100000;
  upstream pacs {
    server ${o.upstream};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${o.listenPort};
    location / {
      proxy_pass http://pacs;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering on;
      proxy_buffer_size 256k;
      proxy_buffers 8 256k;
      proxy_busy_buffers_size 512k;
      proxy_max_temp_file_size 0;
      proxy_read_timeout 300s;
    }
  }
}
`;
}

/** Writes the configuration under `prefix` (with its temp folders); answers its path. */
export function writeNginxConfig(o: Parameters<typeof nginxConfig>[0]): string {
  for (const d of ['tmp/body', 'tmp/proxy', 'tmp/fastcgi']) mkdirSync(join(o.prefix, d), { recursive: true });
  const file = join(o.prefix, 'nginx.conf');
  writeFileSync(file, nginxConfig(o));
  return file;
}

/** `nginx -t` on a configuration: ok, and what nginx said. */
export function testNginxConfig(binary: string, prefix: string, file: string): { ok: boolean; output: string } {
  const r = spawnSync(binary, ['-t', '-p', prefix, '-c', file], { encoding: 'utf8' });
  return { ok: r.status === 0, output: `${r.stdout}${r.stderr}` };
}

export interface NginxHandle {
  readonly url: string;
  /** The master's and the worker's PIDs (their CPU is the hop's). */
  pids(): number[];
  stop(): Promise<void>;
}

/** Starts nginx in front of `upstream` (host:port) on `port`; resolves once it accepts connections. */
export async function startNginx(binary: string, prefix: string, port: number, upstream: string): Promise<NginxHandle> {
  const file = writeNginxConfig({ prefix, listenPort: port, upstream, asRoot: process.getuid?.() === 0 });
  const t = testNginxConfig(binary, prefix, file);
  if (!t.ok) throw new Error(`nginx rejects its configuration: ${t.output}`);
  const proc = spawn(binary, ['-p', prefix, '-c', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  process.once('exit', () => { try { proc.kill('SIGKILL'); } catch { /* gone */ } });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const t0 = Date.now();
  for (;;) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/`);
      await r.arrayBuffer();
      break;
    } catch {
      if (Date.now() - t0 > 10_000) { proc.kill('SIGKILL'); throw new Error(`nginx did not start in 10 s: ${existsSync(join(prefix, 'error.log')) ? readFileSync(join(prefix, 'error.log'), 'utf8').slice(-500) : ''}`); }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const children = (): number[] => {
    try {
      return readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  };
  return {
    url: `http://127.0.0.1:${port}`,
    pids: () => [proc.pid!, ...children()],
    async stop() { proc.kill('SIGQUIT'); await exited; },
  };
}

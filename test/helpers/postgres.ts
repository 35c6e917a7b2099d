/**
 * A real PostgreSQL (Debian `postgresql`) as a test fixture: a fresh cluster in a temporary
 * directory, listening on a free loopback port, trust authentication, stopped when the test
 * process exits. Run as the `postgres` user when the tests run as root (PostgreSQL refuses root).
 */
import { spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { freePort } from './orthanc.js';

export interface PostgresHandle {
  /** postgres://postgres@127.0.0.1:PORT/DB */
  readonly url: string;
  readonly port: number;
  /** Runs psql -c SQL against the database; returns stdout. */
  psql(sql: string): string;
  /** Creates a login role that must give its password (SCRAM) over TCP; returns its URL, without the password. */
  passwordRole(user: string, password: string): string;
  stop(): void;
}

/** The directory of the newest installed PostgreSQL's binaries, or undefined. */
export function postgresBin(): string | undefined {
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return undefined;
  const v = readdirSync(base).filter((d) => existsSync(join(base, d, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a))[0];
  return v ? join(base, v, 'bin') : undefined;
}

export async function startPostgres(db = 'deid'): Promise<PostgresHandle> {
  const bin = postgresBin();
  if (!bin) throw new Error('PostgreSQL is not installed (apt-get install postgresql)');
  const root = userInfo().uid === 0;
  const dir = mkdtempSync(join(tmpdir(), 'deid-pg-'));
  if (root) {
    const pw = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
    const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
    chownSync(dir, Number(pw.stdout.trim()), Number(gid.stdout.trim()));
  }
  const as = (cmd: string, args: string[]): ReturnType<typeof spawnSync> => spawnSync(root ? 'runuser' : cmd, root ? ['-u', 'postgres', '--', cmd, ...args] : args, { encoding: 'utf8', cwd: dir });
  const port = await freePort();
  const data = join(dir, 'data');
  const init = as(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync']);
  if (init.status !== 0) throw new Error(`initdb failed: ${String(init.stderr).slice(-500)}`);
  const start = as(join(bin, 'pg_ctl'), ['-D', data, '-w', '-t', '30', '-l', join(dir, 'log'), '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, 'start']);
  if (start.status !== 0) throw new Error(`pg_ctl start failed: ${String(start.stderr).slice(-500)}`);
  const psqlAt = (database: string, sql: string): string => {
    const r = spawnSync(join(bin, 'psql'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', database, '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`psql failed: ${r.stderr}`);
    return r.stdout;
  };
  psqlAt('postgres', `CREATE DATABASE ${db}`);
  let stopped = false;
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    as(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', 'stop']);
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', stop);
  const passwordRole = (user: string, password: string): string => {
    if (!/^[a-z_][a-z0-9_]*$/.test(user) || /'/.test(password)) throw new Error('passwordRole: a plain role name and a password without quotes');
    psqlAt(db, `CREATE ROLE ${user} LOGIN SUPERUSER PASSWORD '${password}'`);
    // Before the trust lines: this role alone must authenticate over TCP.
    const hba = join(data, 'pg_hba.conf');
    writeFileSync(hba, `host all ${user} 127.0.0.1/32 scram-sha-256\n${readFileSync(hba, 'utf8')}`);
    psqlAt(db, 'SELECT pg_reload_conf()');
    return `postgres://${user}@127.0.0.1:${port}/${db}`;
  };
  return { url: `postgres://postgres@127.0.0.1:${port}/${db}`, port, psql: (sql) => psqlAt(db, sql), passwordRole, stop };
}

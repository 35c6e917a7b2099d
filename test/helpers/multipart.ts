/**
 * Test-side readers of what the gateway sends, independent of the product's own code:
 * multipart/related bodies, and the PNGs the renderer writes.
 */
import assert from 'node:assert/strict';
import { inflateSync } from 'node:zlib';

/** Splits a multipart/related body into its parts (headers as text, body bytes). */
export function splitMultipart(body: Buffer, contentType: string): { headers: string; body: Buffer }[] {
  const m = /boundary=("?)([^";]+)\1/.exec(contentType);
  assert.ok(m, 'multipart response names its boundary');
  const delim = Buffer.from(`--${m[2]}`);
  const out: { headers: string; body: Buffer }[] = [];
  let at = body.indexOf(delim);
  assert.ok(at >= 0, 'body has a first boundary');
  for (;;) {
    at += delim.length;
    if (body.subarray(at, at + 2).toString() === '--') break;
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delim]), at);
    assert.ok(next > 0, 'every part is closed by a boundary');
    const part = body.subarray(at + 2, next);
    const sep = part.indexOf('\r\n\r\n');
    out.push({ headers: part.subarray(0, sep).toString('latin1'), body: part.subarray(sep + 4) });
    at = next + 2;
  }
  return out;
}

/**
 * Decodes 8-bit PNGs: grey, RGB or RGBA. By default it also checks what the renderer writes
 * (filter 0 on every row); `anyFilter` undoes every filter of PNG (for chromium's screenshots).
 */
export function decodePng(buf: Buffer, opts: { anyFilter?: boolean } = {}): { width: number; height: number; channels: number; data: Buffer } {
  let at = 8, width = 0, height = 0, channels = 0;
  const idat: Buffer[] = [];
  while (at < buf.length) {
    const len = buf.readUInt32BE(at);
    const type = buf.toString('latin1', at + 4, at + 8);
    const body = buf.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') {
      width = body.readUInt32BE(0); height = body.readUInt32BE(4);
      assert.equal(body[8], 8, '8 bits per sample');
      channels = ({ 0: 1, 2: 3, 6: 4 } as Record<number, number>)[body[9]!] ?? 0;
      assert.ok(channels > 0, `colour type ${body[9]} is grey, RGB or RGBA`);
    }
    if (type === 'IDAT') idat.push(body);
    at += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const data = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    if (!opts.anyFilter) assert.equal(filter, 0, 'filter 0');
    const row = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? data[y * stride + i - channels]! : 0;
      const b = y > 0 ? data[(y - 1) * stride + i]! : 0;
      const c = y > 0 && i >= channels ? data[(y - 1) * stride + i - channels]! : 0;
      const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      const pred = filter === 0 ? 0 : filter === 1 ? a : filter === 2 ? b : filter === 3 ? (a + b) >> 1 : pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      data[y * stride + i] = (row[i]! + pred) & 0xff;
    }
  }
  return { width, height, channels, data };
}

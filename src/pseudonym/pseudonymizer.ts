/**
 * Keyed, deterministic pseudonyms for one client (HMAC-SHA-256 with the client's key).
 *
 * - UIDs: "2.25." + the decimal of the first 128 bits of HMAC(key, "uid\0" + uid)
 *   (PS3.5 B.2: a UUID-derived UID under 2.25), valid, ≤ 44 characters, unlinkable
 *   across clients, the same everywhere the same original appears.
 * - Patient IDs: a keyed token, never a plain hash (a small MRN space is brute-forced).
 * - Date offsets: one per patient, keyed on the original Patient ID and issuer, so the
 *   intervals between a patient's studies survive exactly and nobody who knows the ID
 *   can recompute the offset without the key.
 */
import { createHmac } from 'node:crypto';
import type { DateShiftRange } from '../deid/plan.js';

/** Sees every original ↔ pseudonym pair the moment it is made (the reverse-map store). */
export interface PseudonymRecorder {
  record(kind: 'uid' | 'patient', pseudonym: string, original: string): void;
}

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

function base32(bytes: Uint8Array, chars: number): string {
  let out = '';
  let bits = 0;
  let acc = 0;
  for (const b of bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5 && out.length < chars) {
      out += BASE32[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
    if (out.length >= chars) break;
  }
  return out;
}

/** A bounded memo: cleared when full, so memory stays flat however many studies flow. */
class Memo {
  private readonly map = new Map<string, string>();
  constructor(private readonly max: number) {}
  get(k: string): string | undefined { return this.map.get(k); }
  set(k: string, v: string): void {
    if (this.map.size >= this.max) this.map.clear();
    this.map.set(k, v);
  }
}

export class Pseudonymizer {
  private readonly uidMemo = new Memo(200_000);
  private readonly tokenMemo = new Memo(50_000);

  constructor(
    private readonly key: Buffer,
    private readonly dateShift: DateShiftRange,
    private readonly recorder?: PseudonymRecorder,
  ) {}

  private mac(domain: string, value: string): Buffer {
    return createHmac('sha256', this.key).update(domain).update('\0').update(value).digest();
  }

  /** The pseudonymous UID of an original UID. */
  uid(original: string): string {
    const hit = this.uidMemo.get(original);
    if (hit !== undefined) return hit;
    const d = this.mac('uid', original);
    const n = d.readBigUInt64BE(0) << 64n | d.readBigUInt64BE(8);
    const out = `2.25.${n.toString(10)}`;
    this.uidMemo.set(original, out);
    this.recorder?.record('uid', out, original);
    return out;
  }

  /** Canonical key of a patient: issuer and ID; falls back to the name, then to the study. */
  static patientKey(id: string, issuer: string, name: string, studyUid: string): string {
    if (id) return `id:${issuer}\\${id}`;
    if (name) return `name:${name}`;
    return `study:${studyUid}`;
  }

  /** Pseudonymous Patient ID (LO, ≤ 64): "ANON" + 16 base32 characters (80 bits). */
  patientId(patientKey: string): string {
    const k = `p|${patientKey}`;
    const hit = this.tokenMemo.get(k);
    if (hit !== undefined) return hit;
    const out = `ANON${base32(this.mac('patient', patientKey), 16)}`;
    this.tokenMemo.set(k, out);
    this.recorder?.record('patient', out, patientKey);
    return out;
  }

  /** A keyed token for any other value (AE titles, overridden attributes), ≤ maxChars. */
  token(domain: string, value: string, maxChars: number): string {
    const k = `t|${domain}|${maxChars}|${value}`;
    const hit = this.tokenMemo.get(k);
    if (hit !== undefined) return hit;
    const n = Math.max(1, Math.min(maxChars, 64));
    const b = base32(this.mac(`token:${domain}`, value), n);
    const out = n === 1 ? b : `X${b.slice(0, n - 1)}`;
    this.tokenMemo.set(k, out);
    return out;
  }

  /** Days to add to every date of this patient: negative, in [-maxDays, -minDays]. */
  dateOffsetDays(patientKey: string): number {
    const d = this.mac('date', patientKey);
    const span = this.dateShift.maxDays - this.dateShift.minDays + 1;
    return -(this.dateShift.minDays + (d.readUInt32BE(0) % span));
  }
}

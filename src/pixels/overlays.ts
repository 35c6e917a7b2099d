/**
 * Overlays embedded in the pixel cells (the retired usage, PS3.5 8.1.2 before 2004): an Overlay
 * Bit Position outside the stored bits (Bits Stored, High Bit) and no Overlay Data element of
 * its own. One reader for the engine, which clears those bits as pixels stream, and for the
 * gateway's facts, which tell whether an instance's frames must be cut from cleaned pixels.
 */
import type { DatasetView } from './geometry.js';

/** The 16 overlay groups 6000–601E. */
export const OVERLAY_GROUPS: readonly number[] = Array.from({ length: 16 }, (_, i) => 0x6000 + i * 2);

/**
 * Bit positions (0 = least significant) of the embedded overlays of a data set. `hasData`
 * tells whether a group has its own Overlay Data (60xx,3000), also when the reader skipped its
 * value; `kept` tells whether the plan keeps the overlay as it is (then its bit is not cleared).
 */
export function embeddedOverlayBits(v: DatasetView, opts: { hasData: (group: number) => boolean; kept?: (group: number) => boolean }): number[] {
  const bitsStored = v.nums(0x00280101)?.[0];
  const highBit = v.nums(0x00280102)?.[0] ?? (bitsStored === undefined ? undefined : bitsStored - 1);
  const out: number[] = [];
  for (const g of OVERLAY_GROUPS) {
    const bit = v.nums(((g << 16) | 0x0102) >>> 0)?.[0];
    if (bit === undefined || !Number.isInteger(bit) || bit < 0 || opts.hasData(g) || opts.kept?.(g)) continue;
    // Only bits outside the stored range carry an overlay; the image's own bits are never cleared.
    const inStored = bitsStored !== undefined && highBit !== undefined && bit <= highBit && bit >= highBit - bitsStored + 1;
    if (!inStored) out.push(bit);
  }
  return out;
}

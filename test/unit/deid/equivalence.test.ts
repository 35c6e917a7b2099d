/**
 * One plan, every representation (ARCHITECTURE rule 3; issue 2 property): for every
 * fixture and several profiles, de-identifying the Part 10 object and reading it as JSON
 * gives exactly what de-identifying its JSON gives. dcmjs is the independent reader.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { deidentifyJson, deidentifyPart10Buffer } from '../../../src/deid/index.js';
import type { OptionName } from '../../../src/deid/table.js';
import { dcmjsRead, engine, fixtures, normalizeJson } from '../../helpers/fixtures.js';

const PROFILES: Record<string, OptionName[]> = {
  basic: [],
  'modified dates + clean descriptors + structured content': ['retainLongitudinalModifiedDates', 'cleanDescriptors', 'cleanStructuredContent'],
  'retain everything retainable': ['retainSafePrivate', 'retainUIDs', 'retainDeviceIdentity', 'retainInstitutionIdentity', 'retainPatientCharacteristics', 'retainLongitudinalFullDates', 'cleanGraphics'],
};

describe('Part 10 de-identification read as JSON equals JSON de-identification', async () => {
  const fx = await fixtures();
  for (const [name, options] of Object.entries(PROFILES)) {
    const ctx = engine(options);
    for (const f of fx.files) {
      test(`${name}: ${f.meta.file}`, async () => {
        const viaPart10 = dcmjsRead(await deidentifyPart10Buffer(f.bytes, ctx));
        const original = dcmjsRead(f.bytes);
        const viaJson = deidentifyJson(normalizeJson(original.dict), ctx, { writeMarkers: true });
        assert.deepEqual(normalizeJson(viaPart10.dict), normalizeJson(viaJson));
        // File Meta: the Media Storage SOP Instance UID is the de-identified SOP Instance UID.
        assert.deepEqual(viaPart10.meta['00020003']?.Value, viaJson['00080018']?.Value);
      });
    }
  }
});

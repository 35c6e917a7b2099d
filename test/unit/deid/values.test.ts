/**
 * Value transforms (src/deid/values.ts): DA/DT day shifts and the age cap.
 *
 * Expected dates come from hard calendar facts or from the small proleptic Gregorian day
 * count below (written here, not the code under test, and not JavaScript's Date).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { capAge, dummyString, shiftDA, shiftDT } from '../../../src/deid/values.js';

// ---------------------------------------------------------------------------------------------
// An independent calendar: day number of a date, and the date of a day number (year ≥ 1).

const isLeap = (y: number): boolean => (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
const monthDays = (y: number, m: number): number => [31, isLeap(y) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m - 1]!;

function dayNumber(y: number, m: number, d: number): number {
  const py = y - 1;
  let n = 365 * py + Math.floor(py / 4) - Math.floor(py / 100) + Math.floor(py / 400);
  for (let k = 1; k < m; k++) n += monthDays(y, k);
  return n + d; // 0001-01-01 is day 1
}

function fromDayNumber(n: number): [number, number, number] {
  let y = Math.max(1, Math.floor(n / 365.2425));
  while (dayNumber(y + 1, 1, 1) <= n) y++;
  while (dayNumber(y, 1, 1) > n) y--;
  let rest = n - dayNumber(y, 1, 1) + 1;
  let m = 1;
  while (rest > monthDays(y, m)) { rest -= monthDays(y, m); m++; }
  return [y, m, rest];
}

const fmt = ([y, m, d]: [number, number, number]): string =>
  `${String(y).padStart(4, '0')}${String(m).padStart(2, '0')}${String(d).padStart(2, '0')}`;

function expectedShift(da: string, days: number): string {
  return fmt(fromDayNumber(dayNumber(+da.slice(0, 4), +da.slice(4, 6), +da.slice(6, 8)) + days));
}

test('oracle self-check: the independent calendar agrees with known facts', () => {
  assert.equal(dayNumber(1970, 1, 1), 719163); // 1970-01-01 is day 719 163 of the proleptic Gregorian calendar
  assert.equal(dayNumber(2024, 3, 1) - dayNumber(2024, 2, 28), 2);
  assert.equal(dayNumber(2023, 3, 1) - dayNumber(2023, 2, 28), 1);
  assert.equal(dayNumber(2001, 1, 1) - dayNumber(2000, 1, 1), 366);
  assert.equal(dayNumber(1901, 1, 1) - dayNumber(1900, 1, 1), 365);
  assert.deepEqual(fromDayNumber(dayNumber(2024, 2, 29)), [2024, 2, 29]);
});

// ---------------------------------------------------------------------------------------------

describe('shiftDA', () => {
  const cases: Array<[string, number, string | null, string]> = [
    ['20240229', 1, '20240301', 'leap day + 1'],
    ['20240229', -1, '20240228', 'leap day - 1'],
    ['20240229', 365, '20250228', 'leap day + 365'],
    ['20240229', -366, '20230228', 'leap day - 366'],
    ['20240229', -365 * 4 - 1, '20200229', 'leap day - 4 years'],
    ['20240101', -1, '20231231', 'year boundary backwards'],
    ['20231231', 1, '20240101', 'year boundary forwards'],
    ['20000228', 1, '20000229', '2000 is a leap year'],
    ['19000228', 1, '19000301', '1900 is not a leap year'],
    ['21000228', 1, '21000301', '2100 is not a leap year'],
    ['20240315', 0, '20240315', 'zero shift keeps the date'],
    ['20240301', -3650, '20140304', 'ten years back (default maximum)'],
    ['2024.02.29', 1, '20240301', 'ACR-NEMA form, normalised'],
    ['2024.01.01', -1, '20231231', 'ACR-NEMA form, year boundary'],
    [' 20240229 ', 1, '20240301', 'surrounding spaces (padding)'],
    ['', -100, '', 'empty stays empty'],
    ['   ', -100, '', 'spaces only: empty'],
    ['20230231', 1, null, 'February 31st is not a date'],
    ['20230229', 1, null, 'February 29th in a common year'],
    ['20231301', 1, null, 'month 13'],
    ['20230001', 1, null, 'month 0'],
    ['20230100', 1, null, 'day 0'],
    ['20230132', 1, null, 'day 32'],
    ['2023021', 1, null, 'seven digits'],
    ['202302011', 1, null, 'nine digits'],
    ['2023-02-01', 1, null, 'ISO dashes are not DA'],
    ['20230201-20230301', 1, null, 'a range (query syntax) is not a value'],
    ['abcdefgh', 1, null, 'letters'],
  ];
  for (const [input, days, expected, why] of cases) {
    test(`${why}: shiftDA(${JSON.stringify(input)}, ${days}) → ${JSON.stringify(expected)}`, () => {
      assert.equal(shiftDA(input, days), expected);
    });
  }

  test('agrees with the independent calendar for 2 000 pseudo-random dates and offsets', () => {
    let seed = 12345;
    const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
    for (let i = 0; i < 2000; i++) {
      const y = 1900 + rnd(200);
      const m = 1 + rnd(12);
      const d = 1 + rnd(monthDays(y, m));
      const da = fmt([y, m, d]);
      const days = -rnd(3651);
      assert.equal(shiftDA(da, days), expectedShift(da, days), `${da} ${days}`);
    }
  });

  test('a shift that leaves year 1..9999 gives null', () => {
    assert.equal(shiftDA('99991231', 1), null);
  });

  test('years before 100 are not read as 19xx', () => {
    assert.equal(shiftDA('00500615', 1), expectedShift('00500615', 1));
    assert.equal(shiftDA('00010102', -1), '00010101');
  });
});

describe('shiftDT', () => {
  const cases: Array<[string, number, string | null, string]> = [
    ['2024', -1, '2023', 'YYYY: shifts the first day of the year, keeps the precision'],
    ['2024', 1, '2024', 'YYYY: Jan 1 + 1 stays in the year'],
    ['202403', -1, '202402', 'YYYYMM: March 1 - 1 is in February'],
    ['202401', -1, '202312', 'YYYYMM across the year boundary'],
    ['20240229', 1, '20240301', 'YYYYMMDD leap day'],
    ['2024022912', 1, '2024030112', 'with hours'],
    ['202402291230', 1, '202403011230', 'with hours and minutes'],
    ['20240229123045', 1, '20240301123045', 'with seconds'],
    ['20240229123045.123456', 1, '20240301123045.123456', 'with a 6-digit fraction'],
    ['20240229123045.1', -1, '20240228123045.1', 'with a 1-digit fraction'],
    ['20240229123045+0100', 1, '20240301123045+0100', '"+0100" suffix kept'],
    ['20240229123045.5-0500', 1, '20240301123045.5-0500', '"-0500" suffix kept after a fraction'],
    ['20231231235959-0500', 1, '20240101235959-0500', 'year boundary with time and offset'],
    ['20240229+0100', 1, '20240301+0100', 'date with offset only'],
    ['2024+0100', -1, '2023+0100', 'year with offset'],
    [' 20240229 ', 1, '20240301', 'padding trimmed'],
    ['', 5, '', 'empty stays empty'],
    ['20230231', 1, null, 'invalid day'],
    ['20231301120000', 1, null, 'invalid month'],
    ['202402291', 1, null, 'odd digit count'],
    ['20240229123045.1234567', 1, null, 'fraction longer than 6 digits'],
    ['20240229123045+01', 1, null, 'short offset'],
    ['20240229T123045', 1, null, 'ISO "T" separator'],
    ['2024-02-29', 1, null, 'ISO dashes'],
    ['garbage', 1, null, 'letters'],
  ];
  for (const [input, days, expected, why] of cases) {
    test(`${why}: shiftDT(${JSON.stringify(input)}, ${days}) → ${JSON.stringify(expected)}`, () => {
      assert.equal(shiftDT(input, days), expected);
    });
  }

  test('the date part agrees with shiftDA-independent arithmetic, the time part is untouched', () => {
    for (const [da, days] of [['20240229', -3650], ['19991231', -400], ['20000301', -1]] as const) {
      const out = shiftDT(`${da}081500.25+0200`, days);
      assert.equal(out, `${expectedShift(da, days)}081500.25+0200`);
    }
  });
});

describe('capAge', () => {
  const cases: Array<[string, string | null, string]> = [
    ['089Y', '089Y', '89 years kept'],
    ['090Y', '090Y', '90 years reported as 090Y'],
    ['095Y', '090Y', '95 years capped'],
    ['120Y', '090Y', '120 years capped'],
    ['000Y', '000Y', 'zero kept'],
    ['999M', '999M', '999 months (83 years) kept'],
    ['004W', '004W', 'weeks kept'],
    ['999W', '999W', '999 weeks (19 years) kept'],
    ['045D', '045D', 'days kept'],
    ['', '', 'empty stays empty'],
    [' 045D', '045D', 'padding trimmed'],
    // AS is exactly four characters, nnn + D/W/M/Y (PS3.5 Table 6.2-1): anything else is not an age.
    ['1100M', null, 'four digits: not an AS value'],
    ['1080M', null, '90 years in months needs four digits: not an AS value (emptied, not passed)'],
    ['89Y', null, 'two digits'],
    ['089y', null, 'lower-case unit'],
    ['089', null, 'no unit'],
    ['089 Y', null, 'inner space'],
    ['-01Y', null, 'negative'],
    ['089A', null, 'unknown unit'],
  ];
  for (const [input, expected, why] of cases) {
    test(`${why}: capAge(${JSON.stringify(input)}) → ${JSON.stringify(expected)}`, () => {
      assert.equal(capAge(input), expected);
    });
  }

  test('no age that the standard can express in months, weeks or days exceeds 89 years', () => {
    // 999M = 83.25 y, 999W ≈ 19 y, 999D ≈ 2.7 y: every such value is kept as it is.
    for (let n = 0; n <= 999; n += 37) {
      for (const u of ['M', 'W', 'D']) {
        const v = `${String(n).padStart(3, '0')}${u}`;
        assert.equal(capAge(v), v);
      }
    }
  });
});

describe('dummyString', () => {
  test('non-empty values of the right VR form (PS3.15 Table E.1-1a)', () => {
    assert.match(dummyString('DA') ?? '', /^\d{8}$/);
    assert.match(dummyString('DT') ?? '', /^\d{14}$/);
    assert.match(dummyString('TM') ?? '', /^\d{6}$/);
    assert.match(dummyString('AS') ?? '', /^\d{3}[DWMY]$/);
    for (const vr of ['SH', 'AE', 'CS'] as const) assert.ok((dummyString(vr)?.length ?? 0) <= 16 && (dummyString(vr)?.length ?? 0) > 0, '(dummyString(vr)?.length ?? 0) <= 16 && (dummyString(vr)?.length ?? 0) > 0');
    assert.equal(dummyString('UI'), undefined, 'UIDs are mapped, not dummied');
    assert.equal(dummyString('OB'), undefined);
  });
});

#!/usr/bin/env python3
"""Writes unicode-data.bin, the Unicode tables of lrlrun's managed tokenizers, from the same sources Hugging Face
tokenizers (Rust) is built with, so that normalization gives the same ids:
  - normalization (canonical combining classes, full canonical and compatibility decompositions, compositions) and
    General_Category=Mark from unicode-normalization-alignments 0.1.12 (Unicode 9.0): its src/tables.rs;
  - punctuation (P*), nonspacing marks (Mn) and "other" (Cc, Cf, Co) from unicode_categories 0.1.1 (published
    2016-10-22, commit 92bb246; Unicode 9.0): its src/tables.rs (the Punctuation/Bert pre-tokenizers and the Bert normalizer use these);
  - full lowercase mappings (Rust's char::to_lowercase) from this Python's unicodedata.
Usage: python3 generate_unicode_data.py NORMALIZATION_TABLES_RS CATEGORIES_TABLES_RS
(github.com/n1t0/unicode-normalization src/tables.rs, github.com/swgillespie/unicode-categories src/tables.rs at commit 92bb246, not its newer HEAD)."""
import os, re, struct, sys, unicodedata

norm_src = open(sys.argv[1], encoding='utf-8').read()
cat_src = open(sys.argv[2], encoding='utf-8').read()

def block(src, name):
    m = re.search(r'(?:pub\(crate\) const|pub static|pub const) ' + name + r'\s*:[^=]*=\s*&\[(.*?)\];', src, re.S)
    if not m: raise SystemExit('table not found: ' + name)
    return m.group(1)

def chars(text): return [int(x, 16) for x in re.findall(r"\\u\{([0-9A-Fa-f]+)\}", text)]

version = re.search(r'UNICODE_VERSION: \(u64, u64, u64\) = \((\d+), (\d+), (\d+)\)', norm_src).groups()
ccc = [(v >> 8, v & 0xFF) for v in (int(x, 16) for x in re.findall(r'0x([0-9a-fA-F]+)', block(norm_src, 'CANONICAL_COMBINING_CLASS_KV')))]
def decomp(name):
    out = []
    for m in re.finditer(r"\(0x([0-9A-Fa-f]+), &\[(.*?)\]\)", block(norm_src, name)):
        out.append((int(m.group(1), 16), chars(m.group(2))))
    return out
canon, compat = decomp('CANONICAL_DECOMPOSED_KV'), decomp('COMPATIBILITY_DECOMPOSED_KV')
pairs = []
for m in re.finditer(r"\(0x([0-9A-Fa-f]+), '\\u\{([0-9A-Fa-f]+)\}'\)", block(norm_src, 'COMPOSITION_TABLE_KV')):
    k = int(m.group(1), 16); pairs.append((k >> 16, k & 0xFFFF, int(m.group(2), 16)))
astral = norm_src[norm_src.index('fn composition_table_astral'):]
astral = astral[:astral.index('\n}\n')]
for m in re.finditer(r"\('\\u\{([0-9A-Fa-f]+)\}', '\\u\{([0-9A-Fa-f]+)\}'\) => Some\('\\u\{([0-9A-Fa-f]+)\}'\)", astral):
    pairs.append(tuple(int(g, 16) for g in m.groups()))
marks = [int(x, 16) for x in re.findall(r'0x([0-9a-fA-F]+)', block(norm_src, 'COMBINING_MARK_KV'))]

punct = sorted(set(sum((chars(block(cat_src, n)) for n in ['PUNCTUATION_CLOSE', 'PUNCTUATION_CONNECTOR', 'PUNCTUATION_DASH',
        'PUNCTUATION_FINAL_QUOTE', 'PUNCTUATION_INITIAL_QUOTE', 'PUNCTUATION_OPEN', 'PUNCTUATION_OTHER']), [])))
mn = sorted(set(chars(block(cat_src, 'MARK_NONSPACING'))))
other = set(sum((chars(block(cat_src, n)) for n in ['OTHER_CONTROL', 'OTHER_FORMAT', 'OTHER_PRIVATE_USE']), []))
# is_other_private_use matches the private-use planes by range before its table
other = sorted(other | set(range(0xE000, 0xF8FF + 1)) | set(range(0xF0000, 0xFFFFD + 1)) | set(range(0x100000, 0x10FFFD + 1)))

def ranges(cps):
    r = []
    for c in sorted(cps):
        if r and r[-1][1] == c - 1: r[-1][1] = c
        else: r.append([c, c])
    return r

lower = []
for cp in range(0x110000):
    if 0xD800 <= cp <= 0xDFFF: continue
    lo = chr(cp).lower()
    if lo != chr(cp): lower.append((cp, [ord(x) for x in lo]))

out = bytearray()
ver = ('.'.join(version) + ' (normalization, categories); lowercase ' + unicodedata.unidata_version).encode()
out += struct.pack('<I', len(ver)) + ver
out += struct.pack('<I', len(ccc))
for cp, c in ccc: out += struct.pack('<IB', cp, c)
for table in (canon, compat, lower):
    out += struct.pack('<I', len(table))
    for cp, seq in table: out += struct.pack('<IB', cp, len(seq)) + b''.join(struct.pack('<I', x) for x in seq)
out += struct.pack('<I', len(pairs))
for a, b, c in pairs: out += struct.pack('<III', a, b, c)
for s in (marks, punct, mn, other):
    rs = ranges(s)
    out += struct.pack('<I', len(rs)) + b''.join(struct.pack('<II', a, b) for a, b in rs)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'unicode-data.bin')
with open(path + '.tmp', 'wb') as f: f.write(out)
os.replace(path + '.tmp', path)
print(f'{path}: {ver.decode()}; {len(ccc)} ccc, {len(canon)} canonical, {len(compat)} compat, {len(pairs)} compositions, '
      f'{len(marks)} marks, {len(punct)} punctuation, {len(mn)} Mn, {len(other)} other, {len(lower)} lowercase; {len(out)} bytes')

#!/usr/bin/env python3
"""Writes unicode-data.bin: the tables lrlrun's managed Unicode normalization and lowercasing need
(canonical combining classes, full canonical and compatibility decompositions, primary composites, full lowercase
mappings). Hangul syllables are algorithmic and left out. Regenerate with: python3 generate_unicode_data.py
(the tables follow the Unicode version of the Python that runs it; the header records it)."""
import struct, sys, unicodedata, os

def full(cp, compat):
    s = unicodedata.normalize('NFKD' if compat else 'NFD', chr(cp))
    return [ord(c) for c in s]

ccc, canon, compat, pairs, lower = [], [], [], [], []
for cp in range(0x110000):
    if 0xD800 <= cp <= 0xDFFF or 0xAC00 <= cp <= 0xD7A3:
        continue
    ch = chr(cp)
    c = unicodedata.combining(ch)
    if c:
        ccc.append((cp, c))
    d = full(cp, False)
    if d != [cp]:
        canon.append((cp, d))
    k = full(cp, True)
    if k != d:
        compat.append((cp, k))
    raw = unicodedata.decomposition(ch)
    if raw and not raw.startswith('<'):
        parts = [int(x, 16) for x in raw.split()]
        if len(parts) == 2 and unicodedata.normalize('NFC', ch) == ch:
            pairs.append((parts[0], parts[1], cp))
    lo = ch.lower()
    if lo != ch:
        lower.append((cp, [ord(x) for x in lo]))

out = bytearray()
ver = unicodedata.unidata_version.encode()
out += struct.pack('<I', len(ver)) + ver
out += struct.pack('<I', len(ccc))
for cp, c in ccc: out += struct.pack('<IB', cp, c)
for table in (canon, compat, lower):
    out += struct.pack('<I', len(table))
    for cp, seq in table:
        out += struct.pack('<IB', cp, len(seq)) + b''.join(struct.pack('<I', x) for x in seq)
out += struct.pack('<I', len(pairs))
for a, b, c in pairs: out += struct.pack('<III', a, b, c)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'unicode-data.bin')
with open(path + '.tmp', 'wb') as f: f.write(out)
os.replace(path + '.tmp', path)
print(f'{path}: Unicode {unicodedata.unidata_version}, {len(ccc)} ccc, {len(canon)} canonical, {len(compat)} compat, '
      f'{len(lower)} lowercase, {len(pairs)} composites, {len(out)} bytes')

#!/usr/bin/env python3
"""Makes the sentencepiece oracle files for lrlrun's tokenizer.model tests: trains small models of both kinds with
unusual settings on the shared multilingual corpus, and records sentencepiece's own ids and decoded text for the
corpus lines and for seeded random strings drawn from many Unicode blocks, for those models and the shared ones.

Needs sentencepiece's Python module (Debian bookworm: apt-get download python3-sentencepiece libsentencepiece0, extract
with dpkg-deb -x into ROOT, then run with LD_LIBRARY_PATH=ROOT/usr/lib/x86_64-linux-gnu
PYTHONPATH=ROOT/usr/lib/python3/dist-packages /usr/bin/python3 make_oracle.py SHARED_TOKENIZERS_DIR)."""
import json, os, random, sys, unicodedata
import sentencepiece as spm

here = os.path.dirname(os.path.abspath(__file__))
shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, '../../../../../shared/tokenizers')
corpus = os.path.join(shared, 'corpus.txt')

trained = {
    'unigram-nmt-nfkc': dict(model_type='unigram', vocab_size=1400, normalization_rule_name='nmt_nfkc',
                             user_defined_symbols=['<mask>', '@@'], control_symbols=['<ctl>']),
    'unigram-bytes-identity': dict(model_type='unigram', vocab_size=1200, byte_fallback=True, normalization_rule_name='identity',
                                   remove_extra_whitespaces=False, split_digits=True),
    'bpe-nfkc-cf-nodummy': dict(model_type='bpe', vocab_size=1300, normalization_rule_name='nfkc_cf', add_dummy_prefix=False,
                                user_defined_symbols=['<sep>']),
}
for name, opts in trained.items():
    prefix = os.path.join(here, name)
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, character_coverage=0.98, hard_vocab_limit=False,
                                   minloglevel=2, **opts)
    os.remove(prefix + '.vocab')

BLOCKS = [(0x20, 0x7E), (0xA0, 0x17F), (0x180, 0x24F), (0x250, 0x2AF), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
          (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0x980, 0x9FF), (0xB80, 0xBFF), (0xE00, 0xE7F),
          (0x10A0, 0x10FF), (0x1200, 0x137F), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x3040, 0x30FF), (0x4E00, 0x4FFF),
          (0xAC00, 0xAD00), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF), (0x1D400, 0x1D4FF), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF)]
SPECIAL = ['\u200d', '\u200c', '\u200e', '\u200f', '\ufe0f', ' ', ' ', ' ', '  ', '\t', '\n', '\u3000', '\u00a0', '0', '7', '▁']

def random_strings(seed, count):
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        chars = []
        for _ in range(rng.randint(1, 24)):
            if rng.random() < 0.25:
                chars.append(rng.choice(SPECIAL))
                continue
            lo, hi = rng.choice(BLOCKS)
            c = chr(rng.randint(lo, hi))
            if unicodedata.category(c) in ('Cn', 'Cs', 'Co'):
                continue
            chars.append(c)
        out.append(''.join(chars))
    return out

models = {name: os.path.join(here, name + '.model') for name in trained}
models['bpemb-en-spm'] = os.path.join(shared, 'bpemb-en-spm/tokenizer.model')
models['mistral-v0.3-model'] = os.path.join(shared, 'mistral-v0.3-model/tokenizer.model')
lines = open(corpus, encoding='utf-8').read().split('\n')
for name, path in models.items():
    sp = spm.SentencePieceProcessor(model_file=path)
    texts = lines + random_strings(sum(map(ord, name)), 1000)
    out = os.path.join(here, name + '.expected.jsonl')
    with open(out + '.tmp', 'w', encoding='utf-8') as f:
        f.write(json.dumps({'ref': 'sentencepiece ' + spm.__version__, 'model': os.path.basename(path)}) + '\n')
        for t in texts:
            ids = sp.encode(t)
            f.write(json.dumps({'text': t, 'ids': ids, 'decoded': sp.decode(ids)}, ensure_ascii=False) + '\n')
    os.replace(out + '.tmp', out)
    print(name, len(texts), 'lines')

"""Fuzzing of model files, for the tests of every model's loader."""
import random
import re


def fuzz_model_file(source, path, load, same, cases=400, seed=20261202):
    """Byte flips, random bytes and truncations of the model file ``source``, written to
    ``path`` one at a time, most of them in the zip headers, the .npy headers and the central
    directory, where a flip changes what is declared rather than a checksummed payload.

    Every outcome must be a ValueError naming ``path``'s file, or a model for which
    ``same(loaded)`` holds. Returns the counts ``{"same": ..., "refused": ...}``.
    """
    data = source.read_bytes()
    hot = [i for m in re.finditer(rb"PK\x03\x04", data)
           for i in range(m.start(), min(len(data), m.start() + 220))]
    hot += range(data.find(b"PK\x01\x02"), len(data))
    rng = random.Random(seed)
    outcomes = {"same": 0, "refused": 0}
    for case in range(cases):
        b = bytearray(data)
        how = rng.choice(("flip", "flip", "byte", "truncate"))
        i = rng.choice(hot) if rng.random() < 0.8 else rng.randrange(len(b))
        if how == "flip":
            b[i] ^= 1 << rng.randrange(8)
        elif how == "byte":
            b[i] = rng.randrange(256)
        else:
            del b[i:]
        path.write_bytes(bytes(b))
        try:
            loaded = load(path)
        except ValueError as exc:
            assert path.name in str(exc), (case, how, i, str(exc))
            outcomes["refused"] += 1
            continue
        assert same(loaded), (case, how, i)
        outcomes["same"] += 1
    return outcomes

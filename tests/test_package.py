import factorebm as fe


def test_public_names_exist():
    for name in ["FactorGraph", "min_sum", "sum_product", "free_energy", "most_offending",
                 "chain", "losses", "datasets", "SequenceTagger"]:
        assert hasattr(fe, name), name

"""The energy-surfaces example reproduces the tutorial's collapse result, by measurement."""
import runpy
import warnings
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "energy_surfaces.py"


def test_energy_loss_collapses_only_the_free_architecture(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                          # nothing may land in the cwd ...
    module = runpy.run_path(str(EXAMPLE), run_name="energy_surfaces")
    output = tmp_path / "plots" / "surfaces.png"
    output.parent.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = module["main"](output=output)         # ... only at the path given
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]
    try:
        import matplotlib  # noqa: F401
        assert output.exists()
    except ImportError:
        assert not output.exists() and "matplotlib is not installed" in out
    # every loss's conditions hold on both architectures: energies >= 0, no warning
    assert not [c for c in caught if "non-negative energies" in str(c.message)]
    r = {key: res for key, (_, _, res) in results.items()}
    assert all(res["min_energy"] >= 0 for res in r.values())
    # the energy loss: fine on the quadratic architecture, collapse (a flat surface) on the
    # free one
    assert r["quadratic", "energy"]["accuracy"] > 0.9 and r["quadratic", "energy"]["gap"] > 0
    assert r["free", "energy"]["spread"] < module["FLAT"]
    assert r["free", "energy"]["verdict"] == "COLLAPSED"
    # the margin losses and NLL really train both
    for arch in ("quadratic", "free"):
        for loss in ("hinge", "square_square", "nll"):
            assert r[arch, loss]["accuracy"] >= (0.9 if arch == "free" else 0.8), (arch, loss)
            assert r[arch, loss]["gap"] > 0 and r[arch, loss]["verdict"] == "learns"
    assert "COLLAPSED: free/energy\n" in out and "     poor: none" in out
    assert "As the tutorial says" in out


def test_verdicts_come_from_the_measured_numbers():
    verdict = runpy.run_path(str(EXAMPLE), run_name="energy_surfaces")["verdict"]
    good = {"accuracy": 0.95, "gap": 1.0, "spread": 10.0}
    assert verdict(good, 0.2) == "learns"
    assert verdict(dict(good, spread=0.01), 0.2) == "COLLAPSED"      # flat surface
    assert verdict(dict(good, gap=-0.5), 0.2) == "COLLAPSED"         # wrong answers lower
    assert verdict(dict(good, accuracy=0.22), 0.2) == "COLLAPSED"    # no better than guessing
    # the old demo's square-square on an architecture with negative energies (0.525) is no
    # longer called "learns"
    assert verdict(dict(good, accuracy=0.525), 0.2) == "poor"

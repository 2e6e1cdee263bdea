"""The energy-surfaces example reproduces the tutorial's collapse result."""
import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "energy_surfaces.py"


def test_energy_loss_collapses_only_the_free_architecture(capsys):
    module = runpy.run_path(str(EXAMPLE), run_name="energy_surfaces")
    results = module["main"]()
    out = capsys.readouterr().out
    majority = 0.3  # the commonest answer's frequency is printed; about 0.2 here
    acc = {key: r["accuracy"] for key, (_, _, r) in results.items()}
    gap = {key: r["gap"] for key, (_, _, r) in results.items()}
    # the energy loss: fine on the quadratic architecture, collapse on the free one
    assert acc["quadratic", "energy"] > 0.9 and gap["quadratic", "energy"] > 0
    assert acc["free", "energy"] < majority and gap["free", "energy"] < 0
    # the contrastive losses train both architectures
    for arch in ("quadratic", "free"):
        for loss in ("square_square", "nll"):
            assert acc[arch, loss] > majority + 0.1, (arch, loss)
            assert gap[arch, loss] > 0, (arch, loss)
    assert out.count("COLLAPSED") == 1

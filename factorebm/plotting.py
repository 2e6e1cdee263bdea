"""Pictures of training: the curve of loss and dev accuracy per epoch (``factorebm train
--plot``).

matplotlib is optional (``pip install 'factorebm[plot]'``): it is imported here only, when a
picture is asked for, and drawn with the Agg backend through matplotlib's object interface,
so neither pyplot nor any global backend setting is touched.
"""

__all__ = ["training_curve", "require_matplotlib"]


def require_matplotlib(option="plotting"):
    """ValueError with the way to install matplotlib when it cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(f"{option} needs matplotlib, which is not installed: "
                         "pip install 'factorebm[plot]' (or pip install matplotlib)") from None


def training_curve(history, path, title=None):
    """Save the training curve of a history to an image file.

    Parameters
    ----------
    history : list of dict
        The rows of :func:`factorebm.optimize.minimize` (``SequenceTagger.history_``):
        ``epoch``, ``loss`` and, when a dev set was given, ``dev_accuracy`` in [0, 1].
    path : str or os.PathLike
        The image; its suffix picks the format (``.png``, ``.pdf``, ``.svg``, ...).
    title : str, optional

    Plots the loss per epoch (left axis) and the dev accuracy in percent (right axis).
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    if not history:
        raise ValueError("the history is empty: nothing to plot")
    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["loss"] for row in history], marker="o", color="C0")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="C0")
    dev = [(row["epoch"], 100 * row["dev_accuracy"]) for row in history
           if "dev_accuracy" in row]
    if dev:
        right = ax.twinx()
        right.plot(*zip(*dev), marker="s", color="C1")
        right.set_ylabel("dev accuracy (%)", color="C1")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

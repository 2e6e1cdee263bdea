"""scikit-learn-style parameters, shared by the estimators (SequenceTagger, GridCRF).

An estimator's settings are the attributes named in ``_PARAM_NAMES``; every other keyword it
was given is a parameter of its loss, kept in ``loss_params``. ``_check_params()`` raises
ValueError naming the first bad setting.
"""

__all__ = ["Estimator"]


class Estimator:
    """``get_params`` / ``set_params`` as scikit-learn expects them (so that ``clone`` and
    ``GridSearchCV`` work), over ``_PARAM_NAMES`` and ``loss_params``."""

    _PARAM_NAMES = ()

    def get_params(self, deep=True):
        """dict: every setting, and the loss's parameters."""
        params = {k: getattr(self, k) for k in self._PARAM_NAMES}
        params.update(self.loss_params)
        return params

    def set_params(self, **params):
        """Set settings or loss parameters; a bad value raises ValueError and leaves the
        estimator as it was. Returns the estimator."""
        old = self.get_params()
        loss_params = dict(self.loss_params)
        for k, v in params.items():
            if k in self._PARAM_NAMES:
                setattr(self, k, v)
            else:
                loss_params[k] = v
        self.loss_params = loss_params
        try:
            self._check_params()
        except ValueError:
            for k in self._PARAM_NAMES:
                setattr(self, k, old[k])
            self.loss_params = {k: v for k, v in old.items() if k not in self._PARAM_NAMES}
            raise
        return self

    def _check_params(self):
        raise NotImplementedError

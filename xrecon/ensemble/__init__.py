"""Ensembles: the members' best per gap class, with calibrated intervals (docs/ensemble.md).

:func:`fit_ensemble` fits one on a cube's own hidden observations and writes a small JSON file;
``ds.recon.fill(method="ensemble", checkpoint=path, interval=0.9)`` fills with it. :func:`load_ensemble`
reads the file (its ``scores()`` and ``coverage()`` are what was measured when fitting).
"""

from xrecon.ensemble.features import GapClasses
from xrecon.ensemble.file import Ensemble, Member, load_ensemble
from xrecon.ensemble.fit import DatesWarning, fit_ensemble, members_folder

__all__ = ["DatesWarning", "Ensemble", "GapClasses", "Member", "fit_ensemble", "load_ensemble", "members_folder"]

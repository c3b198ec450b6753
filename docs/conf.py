"""Sphinx configuration of xrecon's documentation: ``make docs`` (warnings are errors)."""

from __future__ import annotations

import shutil
from pathlib import Path

import sphinx_autosummary_accessors

import xrecon

HERE = Path(__file__).resolve().parent

project = "xrecon"
author = "the xrecon developers"
release = version = xrecon.__version__

extensions = [
    "myst_nb",  # the docs/*.md pages (MyST) and the example notebooks, rendered without running them
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # numpydoc docstrings
    "sphinx_autosummary_accessors",  # ds.recon.* documented as xarray extensions document accessors
]
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "generated/*.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

autosummary_generate = True
autodoc_typehints = "none"  # the numpydoc sections say the types; signatures stay short
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
nb_execution_mode = "off"  # make test executes the notebooks already (nbmake)
suppress_warnings = ["myst.xref_missing", "misc.highlighting_failure"]  # links to .py files of the repository

html_theme = "pydata_sphinx_theme"
html_title = f"xrecon {version}"


def _copy_examples(app) -> None:
    """The notebooks live in examples/ (where make test runs them); the docs render a copy."""
    target = HERE / "examples"
    target.mkdir(exist_ok=True)
    for nb in sorted((HERE.parent / "examples").glob("*.ipynb")):
        shutil.copy2(nb, target / nb.name)


def setup(app) -> None:
    app.connect("builder-inited", _copy_examples)

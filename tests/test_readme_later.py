"""The documentation's promises from its section test_readme.LATER ("Hyperparameter search") on:
the test of tests/test_readme.py, in a file of its own so that pytest-xdist, which runs a file on one
worker (--dist loadfile), runs the two halves on both workers at once."""

import pytest

import test_readme
from test_readme import finished, sections

pytestmark = pytest.mark.slow

section_runs = test_readme.section_runs  # the module fixture: this file's sections, two at a time


@pytest.mark.parametrize("section, step", sections(in_later=True))
def test_readme_commands_do_what_they_promise(section, step, section_runs):
    finished(section, step, section_runs)

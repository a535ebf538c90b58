"""Every public name of ``mmvae_bench.api`` has an example, and every example runs (STYLE §2:
"Every api.py name has a Google-style docstring"; zuko runs its docstring examples in CI).

An example lives in the object's own docstring (methods included) or, for objects whose
docstrings have none yet, under the object's name in ``api.__test__``.
"""

from __future__ import annotations

import doctest
import inspect

import pytest
import torch

import mmvae_bench.api as api

_FINDER = doctest.DocTestFinder(exclude_empty=True)


def _doctests(name: str) -> list[doctest.DocTest]:
    obj = getattr(api, name)
    tests = []
    if inspect.isclass(obj) or inspect.isfunction(obj):  # not aliases or marker instances
        tests = [t for t in _FINDER.find(obj, f"api.{name}") if t.examples]
    extra = api.__test__.get(name)
    if extra is not None:
        parser = doctest.DocTestParser()
        tests.append(
            parser.get_doctest(extra, dict(vars(api)), f"api.__test__.{name}", api.__file__, 0)
        )
    return tests


def test_every_public_name_has_an_example() -> None:
    missing = [n for n in api.__all__ if not any(t.examples for t in _doctests(n))]
    assert not missing, f"public names of mmvae_bench.api without a doctest example: {missing}"


def test_every_public_class_and_function_has_a_docstring() -> None:
    objs = {n: getattr(api, n) for n in api.__all__}
    bare = [
        n
        for n, o in objs.items()
        if (inspect.isclass(o) or inspect.isfunction(o)) and not inspect.getdoc(o)
    ]
    assert not bare, bare


def test_examples_are_keyed_by_public_names() -> None:
    # A renamed or removed name must not leave its example behind, unrun by the test below.
    assert set(api.__test__) <= set(api.__all__), set(api.__test__) - set(api.__all__)


@pytest.mark.parametrize("name", api.__all__)
def test_examples_run(name: str) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    torch.manual_seed(0)  # examples that draw without a generator see the same numbers
    for test in _doctests(name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"


def test_a_wrong_example_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = api.__test__["subset_key"].replace("'image+sound'", "'sound+image'")
    monkeypatch.setitem(api.__test__, "subset_key", wrong)
    runner = doctest.DocTestRunner()
    for test in _doctests("subset_key"):
        runner.run(test, out=lambda _: None)
    assert runner.summarize(verbose=False).failed == 1

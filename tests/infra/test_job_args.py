"""Every ``python ray_jobs/<job>.py ...`` written in the docs, manifests and job docstrings parses with the real
CLI: a renamed or missing flag fails here, not on a cluster an hour into a job."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from lungdr.cli import build_parser

SOURCES = ["docs/SCALING.md", "docs/SERVING.md", "README.md", "cluster.yaml", "ray_jobs/*.py"]
COMMAND = re.compile(r"python3? ray_jobs/(\w+)\.py([^\n]*)")


def _subcommand(repo, job: str) -> str:
    """The ``lungdr`` subcommand a ray_jobs script runs (``main(["score", ...])``)."""
    m = re.search(r'main\(\["([\w-]+)"', (repo / "ray_jobs" / f"{job}.py").read_text())
    assert m, f"ray_jobs/{job}.py does not call lungdr.cli.main"
    return m.group(1)


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """``(job, argv)`` for each command in ``text``; shell line continuations joined, comments and the
    rest of a shell pipeline (``&&``, ``|``, ``;``) dropped."""
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for m in COMMAND.finditer(text):
        words = shlex.split(m.group(2).split(" #")[0].split("`")[0])
        cut = next((i for i, w in enumerate(words) if w in {"&&", "||", "|", ";"}), len(words))
        out.append((m.group(1), words[:cut]))
    return out


def _documented(repo) -> list[tuple[str, str, list[str]]]:
    found = []
    for pattern in SOURCES:
        for path in sorted(repo.glob(pattern)):
            found += [(str(path.relative_to(repo)), job, argv) for job, argv in _commands(path.read_text())]
    for path in sorted((repo / "infra" / "k8s").glob("rayjob-*.yaml")):
        spec = yaml.safe_load(path.read_text())["spec"]
        found += [(str(path.relative_to(repo)), job, argv) for job, argv in _commands(spec["entrypoint"])]
    return found


def _check(repo, job: str, argv: list[str]) -> None:
    try:
        build_parser().parse_args([_subcommand(repo, job), *argv])
    except SystemExit as exc:  # argparse: unknown flag or a required one missing
        raise AssertionError(f"python ray_jobs/{job}.py {shlex.join(argv)} does not parse") from exc


def test_documented_job_commands_parse(repo):
    found = _documented(repo)
    jobs = {job for _, job, _ in found}
    assert {"score", "train", "train_segmenter", "ingest"} <= jobs, jobs  # the guide shows every job
    for where, job, argv in found:
        if argv in (["--help"], []):
            continue
        try:
            _check(repo, job, argv)
        except AssertionError as exc:
            pytest.fail(f"{where}: {exc}")


def test_a_wrong_flag_is_caught(repo, capsys):
    """The check above can fail: score's input flag is --input, not --data."""
    (job, argv), = _commands("ray job submit -- python ray_jobs/score.py --data s3://a/b --bundle s3://m \\\n"
                             "    --output s3://o  # comment")
    assert argv == ["--data", "s3://a/b", "--bundle", "s3://m", "--output", "s3://o"]
    with pytest.raises(AssertionError, match="does not parse"):
        _check(repo, job, argv)
    _check(repo, job, ["--input", "s3://a/b", "--bundle", "s3://m", "--output", "s3://o"])


def test_the_demo_output_stays_out_of_job_uploads(repo):
    """``ray job submit --working-dir .`` uploads the checkout minus what ``.gitignore`` lists (Ray caps the upload
    at 100 MiB); the README's demo writes ~280 MB of bundles into ``./lungdr-demo`` of that same checkout."""
    default = build_parser().parse_args(["demo"]).out
    ignored = {line.strip().strip("/") for line in (repo / ".gitignore").read_text().splitlines()}
    assert default.strip("./") in ignored

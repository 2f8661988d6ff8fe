"""Findings of the conformance kit: each check passes, fails (what the plugin did, and what the
contract requires) or is skipped (with the reason), and a report raises when one failed."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["pass", "fail", "skip"]


@dataclass
class Finding:
    """One check on one subject: ``status``, and for a failure or skip the ``detail``."""

    subject: str
    check: str
    status: Status
    detail: str = ""

    def __str__(self) -> str:
        head = f"{self.status.upper():4}  {self.subject}: {self.check}"
        return head + (f"\n      {self.detail}" if self.detail else "")


class ContractError(AssertionError):
    """A plugin breaks thawkit's plugin contract; ``report`` holds every finding."""

    def __init__(self, report: Report):
        self.report = report
        failed = report.failures
        super().__init__(f"{len(failed)} of {len(report.findings)} checks failed\n"
                         + "\n".join(str(f) for f in failed))


class _Failed(Exception):
    pass


@dataclass
class Check:
    """The handle of a running check: call :meth:`fail` with what the plugin did."""

    passed: bool = True

    def fail(self, did: str) -> None:
        raise _Failed(did)


@dataclass
class Report:
    """Every finding of one or more checks, in the order they ran."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    @property
    def passed(self) -> bool:
        """True when no check failed (skipped checks do not fail a report)."""
        return not self.failures

    @contextlib.contextmanager
    def checking(self, subject: str, check: str, contract: str) -> Iterator[Check]:
        """Run one check: ``handle.fail(did)`` or any exception fails it, naming ``contract``.

        Example::

            with report.checking("strategy 'x'", "returns phases", "a non-empty list") as c:
                if not phases:
                    c.fail("phases() returned []")
        """
        handle = Check()
        try:
            yield handle
        except _Failed as failed:
            handle.passed = False
            self.findings.append(Finding(subject, check, "fail", f"{failed}; the contract: {contract}"))
        except Exception as exc:
            handle.passed = False
            cause = f" (caused by {type(exc.__cause__).__name__}: {exc.__cause__})" \
                if exc.__cause__ is not None else ""
            self.findings.append(Finding(subject, check, "fail", f"raised {type(exc).__name__}: "
                                         f"{exc}{cause}; the contract: {contract}"))
        else:
            self.findings.append(Finding(subject, check, "pass"))

    def skip(self, subject: str, check: str, why: str) -> None:
        self.findings.append(Finding(subject, check, "skip", why))

    def extend(self, other: Report) -> None:
        self.findings.extend(other.findings)

    def raise_for_failures(self) -> Report:
        """Raise :class:`ContractError` when a check failed; else return the report."""
        if not self.passed:
            raise ContractError(self)
        return self

    def summary(self) -> str:
        counts = {s: sum(1 for f in self.findings if f.status == s) for s in ("pass", "fail", "skip")}
        return (f"{len(self.findings)} checks: {counts['pass']} passed, {counts['fail']} failed"
                + (f", {counts['skip']} skipped" if counts["skip"] else ""))

    def format(self, verbose: bool = False) -> str:
        """One line per check (``verbose``), or per subject whose checks all passed, then
        every failed or skipped check in full, and the counts."""
        if verbose:
            return "\n".join([*(str(f) for f in self.findings), self.summary()])
        subjects: dict[str, list[Finding]] = {}
        for f in self.findings:
            subjects.setdefault(f.subject, []).append(f)
        lines = []
        for subject, found in subjects.items():
            passed = [f for f in found if f.status == "pass"]
            if passed:
                lines.append(f"PASS  {subject}: {len(passed)} check{'s' * (len(passed) > 1)}")
            lines += [str(f) for f in found if f.status != "pass"]
        return "\n".join([*lines, self.summary()])

    def __str__(self) -> str:
        return self.format(verbose=True)

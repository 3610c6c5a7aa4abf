"""Citations of the pinned architecture documents (see ``spec/sources.toml``)."""

from __future__ import annotations

import attrs


@attrs.frozen
class Document:
    """One pinned document: the SDM, the AMD APM, or an Intel feature specification."""

    key: str
    title: str
    number: str
    date: str
    note: str = ""


@attrs.frozen
class Citation:
    """A place in a pinned document: volume, section number and section title.

    Section numbers move between editions; titles do not, so both are kept.
    """

    document: Document
    section: str
    title: str
    volume: str = ""

    def __str__(self) -> str:
        vol = f" Vol. {self.volume}" if self.volume else ""
        sec = f" §{self.section}" if self.section else ""
        return f"{self.document.key.upper()}{vol}{sec} \"{self.title}\""

    @property
    def edition(self) -> str:
        """The document number and date of the pinned edition."""
        return f"{self.document.number} ({self.document.date})"

"""Space-aware region prompts: Center, Surrounding and Total (VIP, section 3.1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


def join_total(center: str, surrounding: str) -> str:
    """The Total prompt the paper uses: ``"Center: ...; Surrounding: ..."``.

    Empty parts are left out, so two empty parts give an empty (unconditional) prompt.
    """
    center, surrounding = center.strip(), surrounding.strip()
    parts = []
    if center:
        parts.append(f"Center: {center}")
    if surrounding:
        parts.append(f"Surrounding: {surrounding}")
    return "; ".join(parts)


def merge_keywords(surrounding: str, keywords: str) -> str:
    """Steer a Surrounding text with user keywords: the keywords come first, the rest follows."""
    surrounding, keywords = surrounding.strip(), keywords.strip()
    if not keywords:
        return surrounding
    if not surrounding:
        return keywords
    return f"{keywords}, {surrounding}"


@dataclass(frozen=True)
class RegionPrompts:
    """The three prompts of C-T-S attention.

    center:      what is visible in the known region.
    surrounding: what should appear in the region to generate.
    total:       the whole picture; given by hand or joined from the other two.
    """

    center: str = ""
    surrounding: str = ""
    total: str = ""

    @classmethod
    def build(
        cls, *, center: str = "", surrounding: str = "", total: str | None = None, keywords: str = ""
    ) -> RegionPrompts:
        """Build prompts from user or captioner parts.

        ``keywords`` are merged into the Surrounding; ``total`` defaults to the joined
        ``"Center: ...; Surrounding: ..."`` text of the final center and surrounding.
        """
        surrounding = merge_keywords(surrounding, keywords)
        center = center.strip()
        if total is None or not total.strip():
            total = join_total(center, surrounding)
        return cls(center=center, surrounding=surrounding, total=total.strip())

    @property
    def is_empty(self) -> bool:
        return not (self.center or self.surrounding or self.total)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

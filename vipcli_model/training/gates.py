"""The learned C-T-S gates at the end of a run: ``gates.json``, and a note when they closed toward 0.

A gate is the weight of the region prompts against the Total prompt in one cross-attention block (0: the block
ignores the Center / Surrounding prompts). Gates that drift toward 0 mean the adapter learned to do without the
region prompts, which defeats C-T-S.
"""

from __future__ import annotations

GATES = "gates.json"  # the learned C-T-S gate of every block, written at the end of a run
CLOSED_GATE = 0.1  # a block whose gate is below this barely uses the region prompts


def gate_report(blocks: list[str], gates: list[float], *, initial: float, step: int) -> dict:
    """The learned gates per block, their mean and minimum, and whether they closed toward 0.

    ``closing``: the mean fell below half its starting value, or a quarter of the blocks closed (below
    ``CLOSED_GATE`` and below half the start); either way the region prompts have lost much of their say.
    """
    mean = sum(gates) / len(gates) if gates else 0.0
    closed = [name for name, gate in zip(blocks, gates) if gate < min(CLOSED_GATE, 0.5 * initial)]
    return {
        "step": step,
        "initial": initial,
        "mean": round(mean, 6),
        "min": round(min(gates), 6) if gates else None,
        "blocks": {name: round(gate, 6) for name, gate in zip(blocks, gates)},
        "closed": closed,
        "closing": bool(gates) and (mean < 0.5 * initial or len(closed) * 4 >= len(gates)),
    }


def closing_note(report: dict, gate_lr: float) -> str | None:
    """What a run whose gates closed should tell its user (None when they held)."""
    if not report["closing"]:
        return None
    return (
        f"the C-T-S gates drifted toward 0 (mean {report['mean']:.2f} from {report['initial']:.2f}; "
        f"{len(report['closed'])} of {len(report['blocks'])} blocks below {CLOSED_GATE}): the adapter "
        f"mostly ignores the region prompts; lower `gate_lr` (now {gate_lr:g}) or train on "
        f"images whose captions describe their parts (see {GATES})"
    )

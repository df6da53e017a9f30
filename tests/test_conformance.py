"""The committed DICOM Conformance Statement says what the code does.

The statement is regenerated from the code's lists and compared with docs/conformance.md;
the lists themselves are checked against a second reader: a real pynetdicom association
(the receiver's accepted contexts) and the receiver's AE object."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import PROJECT_ROOT
from medsendx import conformance
from medsendx.config import GatewaySettings
from medsendx.gateway.receiver import Receiver
from medsendx.gateway.staging import Staging

DOC = PROJECT_ROOT / "docs" / "conformance.md"


def test_committed_statement_matches_the_code():
    assert DOC.read_text(encoding="utf-8") == conformance.render(), (
        "docs/conformance.md is out of date: run python -m medsendx.conformance"
    )


def test_check_mode_detects_a_stale_file(tmp_path: Path):
    stale = tmp_path / "conformance.md"
    stale.write_text(conformance.render().replace("JPEG-LS Lossless", "JPEG-LS Lossy"), encoding="utf-8")
    assert conformance.main(["--check", str(stale)]) == 1
    assert conformance.main([str(stale)]) == 0 and conformance.main(["--check", str(stale)]) == 0


def test_statement_lists_what_the_receiver_really_accepts(tmp_path: Path):
    """Second reader: the SOP classes and syntaxes of the receiver's own AE, not the list
    the statement was made from."""
    receiver = Receiver(GatewaySettings(), Staging(tmp_path / "staging"), lambda p, n: None)
    text = DOC.read_text(encoding="utf-8")
    section = text.split("#### 4.1.1 SOP classes")[1].split("#### 4.1.2")[0]
    listed = set(re.findall(r"`(1\.2\.840\.10008\.[0-9.]+)`", section))
    accepted = {str(c.abstract_syntax) for c in receiver.ae.supported_contexts}
    assert listed == accepted
    storage = text.split("#### 4.1.3")[1].split("#### 4.1.4")[0].split("Every Storage SOP class")[1]
    syntaxes = set(re.findall(r"`(1\.2\.840\.10008\.[0-9.]+)`", storage))
    ct = next(c for c in receiver.ae.supported_contexts if c.abstract_syntax == "1.2.840.10008.5.1.4.1.1.2")
    assert syntaxes == set(ct.transfer_syntax)

"""The files a forker cites and redistributes by: LICENSE and CITATION.cff."""
import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_license_and_citation_agree():
    """CITATION.cff is valid YAML in CFF 1.2 form, cites the paper this repository implements (arXiv 2509.19170,
    its five authors) and names the license that LICENSE holds."""
    with open(os.path.join(ROOT, "CITATION.cff")) as f:
        cff = yaml.safe_load(f)
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["title"] and cff["authors"]
    paper = cff["preferred-citation"]
    assert paper["title"] == "Soft Tokens, Hard Truths" and "2509.19170" in paper["url"]
    assert [a["family-names"] for a in paper["authors"]] == ["Butt", "Kwiatkowski", "Labiad", "Kempe", "Ollivier"]
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert f.readline().strip() == f"{cff['license']} License"

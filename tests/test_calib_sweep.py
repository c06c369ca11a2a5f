"""drivers/calib_sweep.py: the resumable cell files and the table built from them (§3 note).

Run: python -m pytest -q tests/test_calib_sweep.py
"""
import json

from drivers import calib_sweep


def test_s3_sweep_table_from_cells_and_resume_names(tmp_path):
    """Each finished cell is one file named after method, text and budget; the table puts
    both perplexities and prune seconds per method and budget, '-' where a cell has not run
    (or ran before it was scored on the domain text)."""
    for method, w, L, ppl in (("wanda", 8, 256, 43.6), ("wanda", 32, 256, 42.0), ("sparsegpt", 8, 256, 46.0),
                              ("wanda", 4, 512, 44.0)):
        rec = {"method": method, "text": "general", "windows": w, "seqlen": L, "ppl": ppl,
               "dense_ppl": 19.34, "domain_ppl": ppl / 2, "dense_domain_ppl": 15.9,
               "prune_s": 9.4, "wall_s": 30.0}
        calib_sweep.cell(tmp_path, method, w, L, "general").write_text(json.dumps(rec))
    assert calib_sweep.cell(tmp_path, "wanda", 8, 256, "general").name == "wanda-general-8x256.json"
    lines = calib_sweep.table(tmp_path).splitlines()
    assert "| method | 8 x 256 = 2k | 4 x 512 = 2k | 32 x 256 = 8k |" in lines     # by tokens, then window
    assert "| wanda | 43.60 / 21.80 [9] | 44.00 / 22.00 [9] | 42.00 / 21.00 [9] |" in lines
    assert "| sparsegpt | 46.00 / 23.00 [9] | - | - |" in lines
    assert any("dense 19.34 / 15.90" in line for line in lines)
    old = {"method": "foresight", "text": "general", "windows": 32, "seqlen": 256, "ppl": 1.0}
    calib_sweep.cell(tmp_path, "foresight", 32, 256, "general").write_text(json.dumps(old))
    assert "| foresight | - | - | - |" in calib_sweep.table(tmp_path).splitlines()
    assert calib_sweep.table(tmp_path / "none") == "no finished cells yet\n"

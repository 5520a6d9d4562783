"""The ``README.md`` that `samri.cohorts.write_cohort` puts next to a cohort: recipe, seed and subjects."""

from __future__ import annotations

from typing import Any, Mapping

from samri.atlases import HO_ATLAS, JHU_ATLAS
from samri.neuromaps import INIA_ATLAS, INIA_T1

__all__ = ["cohort_readme"]


def _source_lines(r: Mapping[str, Any], kept: Mapping[str, int]) -> str:
    if r.get("domain", "human") == "macaque":
        return f"""- Image: mricron-data's `{INIA_T1}` (INIA19 rhesus macaque template, Rohlfing et al. 2012;
  skull-stripped T1, 0.5 mm).
- Labels: its NeuroMaps label map `{INIA_ATLAS}` inside the brain; structures under {r['min_voxels']} voxels
  dropped, the {len(kept)} kept renumbered 1..N in value order and named `neuromaps_<original value>`
  (mricron-data ships no NeuroMaps names). Names: `label_names.json`."""
    atlas = (f"{sum(n.startswith('jhu_') for n in kept)} JHU + {sum(n.startswith('ho_') for n in kept)} "
             f"Harvard-Oxford structures kept, smallest {min(kept.values())} voxels on the template grid"
             if kept else "see cohort.json")
    return f"""- Image: nilearn's MNI152 2009a T1 template (McConnell Brain Imaging Centre; free use with attribution).
- Labels: mricron-data's `{JHU_ATLAS}` (values 1..48; Mori et al. 2008, JHU ICBM-DTI-81) and
  `{HO_ATLAS}` (values + {r['ho_offset']}, right hemisphere + {r['ho_right']} more; Desikan et al. 2006,
  Makris et al. 2006), resampled (nearest) onto the template, inside its brain mask, Harvard-Oxford
  restricted to `{r['ho_tissue']}`; JHU wins overlaps;
  structures under {r['min_voxels']} voxels dropped ({atlas}). Names: `label_names.json`."""


def cohort_readme(manifest: Mapping[str, Any]) -> str:
    """Markdown describing ``manifest`` (the ``cohort.json`` content)."""
    r = manifest["recipe"]
    domain = r.get("domain", "human")
    rows = "\n".join(f"| {sid} | {s['contrast']} | {s['split']} | {s['seed']} |"
                     for sid, s in manifest["subjects"].items())
    contrasts = ", ".join(f"`{c}` = {v['variants'] or 'deformed only'} "
                          + ("on the template grid" if v["spacing_mm"] == 1.0 else f"at {v['spacing_mm']} mm")
                          for c, v in r["contrast_recipes"].items())
    options = f" --domain {domain} --contrasts {','.join(r['contrasts'])} --min-voxels {r['min_voxels']}" \
        if domain != "human" else ""
    return f"""# SAMRI {domain} cohort (seed {manifest['seed']})

Written by `samri cohort` (`samri.cohorts`); regenerate with
`samri cohort OUT --subjects {r['subjects']} --annotate {r['annotate']} --seed {manifest['seed']}{options}`.

{_source_lines(r, manifest.get("structures", {}))}
- Subjects: `monai.transforms.Rand3DElasticd` (sigma {r['sigma_range']} voxels, magnitude {r['magnitude_range']},
  rotation +-{r['rotate_rad']} rad, scale +-{r['scale']}, translation +-{r['translate_vox']} voxels; image
  bilinear, label nearest), then the contrast (`samri.evaluation.variants.make_variant`):
  {contrasts}.
- Splits: `annotate` subjects are the ones a simulated annotator may finish (and the trainer may
  learn from); `test` subjects must never be used for training or checkpoint choice.

| subject | contrast | split | seed |
|---|---|---|---|
{rows}
"""

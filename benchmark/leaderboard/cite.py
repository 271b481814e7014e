"""Citations: BibTeX of dglbench, the I2F paper, the attacks, defenses and protocols; ``CITATION.cff``.

Tracks list the keys they rest on (``references``); ``render`` writes every entry of
:data:`BIBTEX`, one ``@misc`` per track (:func:`track_bibtex`) and one per submitted reference
(:func:`entry_bibtex`) to ``leaderboards/references.bib``, and the project's own ``CITATION.cff`` when asked.
Every field value is in braces (``version = {0.1.0}``), so BibTeX parsers read it.

Example:
    >>> "zhang2023i2f" in BIBTEX and bibtex(["zhu2019dlg"]).startswith("@inproceedings{zhu2019dlg,")
    True
    >>> "version = {0.1.0}" in bibtex(["dglbench"], version="0.1.0", year="2026")
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["BIBTEX", "REPOSITORY_URL", "bibtex", "citation_cff", "entry_bibtex", "track_bibtex"]

#: Where the source lives (CITATION.cff's ``repository-code`` and the BibTeX ``url``).
REPOSITORY_URL = "https://github.com/dglbench/dglbench"

TITLE = "dglbench: a benchmark of Deep Gradient Leakage attacks, defenses and the Inversion Influence Function"

BIBTEX: dict[str, str] = {
    "dglbench": """@software{dglbench,
  title = {dglbench: a benchmark of Deep Gradient Leakage attacks, defenses and the Inversion Influence Function},
  author = {{dglbench contributors}},
  version = {@VERSION@},
  year = {@YEAR@},
  url = {@URL@},
  note = {Leaderboard schema v2; tracks v2 (v1 superseded)}
}""",
    "zhang2023i2f": """@inproceedings{zhang2023i2f,
  title = {Understanding Deep Gradient Leakage via Inversion Influence Functions},
  author = {Zhang, Haobo and Hong, Junyuan and Deng, Yuyang and Mahdavi, Mehrdad and Zhou, Jiayu},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2023},
  eprint = {2309.13016},
  archivePrefix = {arXiv}
}""",
    "zhu2019dlg": """@inproceedings{zhu2019dlg,
  title = {Deep Leakage from Gradients},
  author = {Zhu, Ligeng and Liu, Zhijian and Han, Song},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2019},
  eprint = {1906.08935},
  archivePrefix = {arXiv}
}""",
    "zhao2020idlg": """@article{zhao2020idlg,
  title = {{iDLG}: Improved Deep Leakage from Gradients},
  author = {Zhao, Bo and Mopuri, Konda Reddy and Bilen, Hakan},
  journal = {arXiv preprint arXiv:2001.02610},
  year = {2020}
}""",
    "geiping2020inverting": """@inproceedings{geiping2020inverting,
  title = {Inverting Gradients -- How easy is it to break privacy in federated learning?},
  author = {Geiping, Jonas and Bauermeister, Hartmut and Dr{\\"o}ge, Hannah and Moeller, Michael},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2020},
  eprint = {2003.14053},
  archivePrefix = {arXiv}
}""",
    "fowl2022robbing": """@inproceedings{fowl2022robbing,
  title = {Robbing the Fed: Directly Obtaining Private Data in Federated Learning with Modified Models},
  author = {Fowl, Liam and Geiping, Jonas and Czaja, Wojciech and Goldblum, Micah and Goldstein, Tom},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2022},
  eprint = {2110.13057},
  archivePrefix = {arXiv}
}""",
    "sun2021soteria": """@inproceedings{sun2021soteria,
  title = {Soteria: Provable Defense Against Privacy Leakage in Federated Learning From Representation Perspective},
  author = {Sun, Jingwei and Li, Ang and Wang, Binghui and Yang, Huanrui and Li, Hai and Chen, Yiran},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2021}
}""",
    "abadi2016dpsgd": """@inproceedings{abadi2016dpsgd,
  title = {Deep Learning with Differential Privacy},
  author = {Abadi, Mart{\\'i}n and Chu, Andy and Goodfellow, Ian and McMahan, H. Brendan and Mironov, Ilya and
            Talwar, Kunal and Zhang, Li},
  booktitle = {ACM SIGSAC Conference on Computer and Communications Security (CCS)},
  year = {2016}
}""",
    "mcmahan2017fedavg": """@inproceedings{mcmahan2017fedavg,
  title = {Communication-Efficient Learning of Deep Networks from Decentralized Data},
  author = {McMahan, H. Brendan and Moore, Eider and Ramage, Daniel and Hampson, Seth and Ag{\\"u}era y Arcas, Blaise},
  booktitle = {International Conference on Artificial Intelligence and Statistics (AISTATS)},
  year = {2017}
}""",
}


def _braced(text: str) -> str:
    """``text`` safe inside one pair of BibTeX braces (unbalanced braces dropped)."""
    return text.replace("{", "(").replace("}", ")")


def track_bibtex(track: Any, version: str | None = None) -> str:
    """A ``@misc`` entry citing one track (``track.ref``) of the dglbench leaderboards."""
    if version is None:
        from dglbench import __version__ as version
    return "\n".join([
        f"@misc{{dglbench-{track.id}-v{track.version},",
        f"  title = {{{{dglbench leaderboard track {_braced(track.ref)}}}: {_braced(track.title)}}},",
        "  author = {{dglbench contributors}},",
        f"  howpublished = {{dglbench {_braced(version)}, leaderboards/v{track.version}/tracks/{track.id}.yaml}},",
        f"  url = {{{REPOSITORY_URL}}},",
        f"  note = {{Cite an entry as {_braced(track.ref)}/<defense>-<hash> with the dglbench version}}",
        "}",
    ])  # fmt: skip


def entry_bibtex(entry: Any) -> str | None:
    """A ``@misc`` entry for the reference a submitter gave (``--reference``), or ``None`` when none was given."""
    ref = entry.defense.reference
    if not ref:
        return None
    key = "dglbench-entry-" + entry.entry_id.replace("@", "-v").replace("/", "-")
    return "\n".join([
        f"@misc{{{key},",
        f"  title = {{{_braced(entry.defense.description or entry.defense.name)}}},",
        f"  howpublished = {{{_braced(ref)}}},",
        f"  note = {{dglbench leaderboard entry {_braced(entry.entry_id)}}}",
        "}",
    ])  # fmt: skip


def bibtex(
    keys: Iterable[str] | None = None, *, version: str = "", year: str = "", tracks: Iterable[Any] = (),
    entries: Iterable[Any] = (),
) -> str:  # fmt: skip
    """BibTeX for ``keys`` (all when ``None``) in :data:`BIBTEX` order, then ``tracks`` and entries' references."""
    wanted = list(BIBTEX) if keys is None else [k for k in BIBTEX if k in set(keys)]
    text = [
        BIBTEX[k]
        .replace("@VERSION@", _braced(version))
        .replace("@YEAR@", _braced(year))
        .replace("@URL@", REPOSITORY_URL)
        for k in wanted
    ]
    text += [track_bibtex(t, version) for t in tracks]
    text += sorted({b for e in entries if (b := entry_bibtex(e))})
    return "\n\n".join(text) + "\n"


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def citation_cff(version: str, date: str | None) -> str:
    """``CITATION.cff`` (Citation File Format 1.2.0) of dglbench, with the I2F paper as a reference.

    ``date`` (the newest entry's day) is left out when ``None``.
    """
    return "\n".join([
        "# This file is generated by `dglbench leaderboard render`; edit benchmark/leaderboard/cite.py instead.",
        "cff-version: 1.2.0",
        "message: If you use dglbench or its leaderboards, please cite it as below, and the I2F paper it builds on.",
        "type: software",
        f"title: {_yaml_str(TITLE)}",
        "authors:",
        "  - name: dglbench contributors",
        f"version: {_yaml_str(version)}",
        *([f"date-released: {_yaml_str(date)}"] if date else []),
        f"repository-code: {_yaml_str(REPOSITORY_URL)}",
        f"url: {_yaml_str(REPOSITORY_URL)}",
        "license: MIT",
        "keywords: [federated learning, gradient inversion, deep gradient leakage, privacy, benchmark, leaderboard]",
        "references:",
        "  - type: conference-paper",
        f"    title: {_yaml_str('Understanding Deep Gradient Leakage via Inversion Influence Functions')}",
        "    authors:",
        *[f"      - family-names: {f}\n        given-names: {g}" for g, f in (
            ("Haobo", "Zhang"), ("Junyuan", "Hong"), ("Yuyang", "Deng"), ("Mehrdad", "Mahdavi"), ("Jiayu", "Zhou"))],
        f"    collection-title: {_yaml_str('Advances in Neural Information Processing Systems (NeurIPS)')}",
        "    year: 2023",
        "    identifiers:",
        "      - type: other",
        f"        value: {_yaml_str('arXiv:2309.13016')}",
        "",
    ])  # fmt: skip

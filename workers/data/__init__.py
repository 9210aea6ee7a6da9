"""Data: files on disk (or in S3) turned into typed `ImageItem`s, and the versioned record of them.

    images.py     decoding, size limits, the decode cache, `ImageItem`: one convention for every reader
    folders.py    listing image folders (sorted, checked), loose image files (`fsad predict`)
    mvtec.py      MVTec-layout categories
    elpv.py       the ELPV solar-cell fallback, in memory or written out in the MVTec layout
    video.py      video scenes: frames, labels, the motion cue, `SceneTaskSource`
    manifest/     Parquet manifests: layout scan, build, read, schema
    splits.py     leave-one-out splits files (folds and support draws)
    sources.py    `FolderSource` / `ManifestSource`: one interface over a folder or a manifest
    s3.py         reading an MVTec-layout tree from S3
    paths.py      names and relative keys checked before any path is joined

Import from the module that defines a name (this package re-exports nothing, so importing one reader
does not pull in pyarrow or boto3).
"""
import warnings

from PIL import Image

# PIL only warns between MAX_IMAGE_PIXELS and twice that; a warning would let the bomb decode. Set here,
# where it holds for every reader in this package (a submodule import runs this first).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

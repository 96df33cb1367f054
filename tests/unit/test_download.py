"""Downloads (acdc_bench.data.download_dataset): Fashion-MNIST's IDX files and CIFAR-100's archive served
by a local HTTP server on 127.0.0.1 (the tests never reach the internet), checked before they are moved
into place, fetched again once when corrupt or partial, refused with a clear error when wrong."""

import dataclasses
import gzip
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from acdc_bench import data as data_module
from acdc_bench.data import DATA_ROOT_ENV, DATASETS, MIRROR_ENV, DataError, download_dataset, load_data

from data_files import FASHION_ROOT, write_idx

STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


class Short(bytes):
    """A body sent with the Content-Length of ``declared`` bytes: the connection closes early."""

    def __new__(cls, body: bytes, declared: int):
        obj = super().__new__(cls, body)
        obj.declared = declared
        return obj


class Mirror(http.server.ThreadingHTTPServer):
    """Serves ``files[name]``: a list of bodies, one a request, the last one repeated. Records each
    request's name and whether the file was at its final path in ``watch`` at that moment."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, list[bytes]] = {}
        self.requests: list[str] = []
        self.final_seen: list[bool] = []
        self.watch: Path | None = None
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mirror/"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server: Mirror = self.server
        name = self.path.rsplit("/", 1)[-1]
        with server.lock:
            server.requests.append(name)
            server.final_seen.append(server.watch is not None and (server.watch / name).exists())
            queue = server.files.get(name)
            body = None if not queue else (queue.pop(0) if len(queue) > 1 else queue[0])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(getattr(body, "declared", len(body))))
        self.end_headers()
        self.wfile.write(bytes(body))
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A mirror on 127.0.0.1 named by ACDC_BENCH_MIRROR; the user cache in tmp_path; no Debian data."""
    server = Mirror()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(MIRROR_ENV, server.url)
    monkeypatch.setenv("no_proxy", "*")  # a proxy in the environment must not see 127.0.0.1
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.setitem(DATASETS, "fashion-mnist", dataclasses.replace(
        DATASETS["fashion-mnist"], default_root=str(tmp_path / "no-debian-package")))
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def fashion(mirror, tmp_path, sample_images, monkeypatch):
    """Small IDX files (101 training, 27 test examples) on the mirror, their MD5s as the expected ones;
    returns their decompressed contents by stem."""
    images, labels = sample_images
    arrays = dict(zip(STEMS, (images[:101], labels[:101], images[101:], labels[101:])))
    folder = tmp_path / "idx"
    folder.mkdir()
    raw = {}
    for stem, array in arrays.items():
        write_idx(folder / stem, array)
        raw[stem] = (folder / stem).read_bytes()
        mirror.files[stem + ".gz"] = [gzip.compress(raw[stem], compresslevel=9, mtime=0)]
    monkeypatch.setattr(data_module, "FASHION_MNIST_MD5", {stem: hashlib.md5(content).hexdigest()
                                                           for stem, content in raw.items()})
    mirror.watch = cache()
    return raw


def cache(dataset: str = "fashion-mnist") -> Path:
    return data_module.user_cache(dataset)


def leftovers(folder: Path) -> list[str]:
    """Files a download must not leave behind (partial downloads, extraction folders)."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".download.lock" and p.name.startswith("."))


def load(**kwargs):
    return load_data("fashion-mnist", root=kwargs.pop("root", None), batch_size=8, seed=0, **kwargs)


# --------------------------------------------------------------------- Fashion-MNIST


def test_missing_fashion_mnist_is_downloaded_into_the_user_cache(fashion, mirror, small_fashion_root, tmp_path,
                                                                 capsys):
    data = load()
    assert (data.train_size, data.test_size) == (101, 27)
    assert sorted(mirror.requests) == sorted(stem + ".gz" for stem in STEMS)
    folder = tmp_path / "xdg" / "acdc-bench" / "fashion-mnist"  # ${XDG_CACHE_HOME}/acdc-bench/<dataset>
    for stem, content in fashion.items():
        assert gzip.decompress((folder / (stem + ".gz")).read_bytes()) == content
    assert leftovers(folder) == []
    reference = load(root=small_fashion_root)  # the same examples written straight to disk
    assert torch.equal(data.train_inputs, reference.train_inputs)
    assert torch.equal(data.test_targets, reference.test_targets)
    line = capsys.readouterr().err
    assert f"downloading 4 file(s) into {folder} from {mirror.url}" in line
    load()  # found in the cache: nothing fetched again
    assert len(mirror.requests) == 4


def test_only_the_missing_files_are_downloaded(fashion, mirror):
    folder = cache()
    folder.mkdir(parents=True)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(fashion["t10k-labels-idx1-ubyte"])
    load()
    assert sorted(mirror.requests) == sorted(stem + ".gz" for stem in STEMS[:3])


def test_acdc_bench_data_is_the_cache_when_set(fashion, mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    mirror.watch = tmp_path / "data" / "fashion-mnist"
    load()
    assert all((tmp_path / "data" / "fashion-mnist" / (stem + ".gz")).is_file() for stem in STEMS)
    assert not (tmp_path / "xdg").exists()


def test_a_corrupt_download_is_fetched_again(fashion, mirror):
    good = mirror.files["train-labels-idx1-ubyte.gz"][0]
    content = bytearray(fashion["train-labels-idx1-ubyte"])
    content[-1] ^= 1  # one label changed: a valid gzip, a valid IDX, the wrong data
    mirror.files["train-labels-idx1-ubyte.gz"] = [gzip.compress(bytes(content)), good]
    data = load()
    assert mirror.requests.count("train-labels-idx1-ubyte.gz") == 2
    assert not any(mirror.final_seen)  # the corrupt file never reached the final path
    assert (cache() / "train-labels-idx1-ubyte.gz").read_bytes() == good
    assert torch.equal(data.train_targets.cpu().to(torch.uint8), torch.frombuffer(
        bytearray(fashion["train-labels-idx1-ubyte"][8:]), dtype=torch.uint8))


@pytest.mark.parametrize("cut", ["connection closed early", "truncated gzip file"])
def test_a_partial_download_is_fetched_again(fashion, mirror, cut, capsys):
    good = mirror.files["train-images-idx3-ubyte.gz"][0]
    half = good[:len(good) // 2]
    partial = Short(half, len(good)) if cut == "connection closed early" else half
    mirror.files["train-images-idx3-ubyte.gz"] = [partial, good]
    load()
    assert mirror.requests.count("train-images-idx3-ubyte.gz") == 2
    assert not any(mirror.final_seen)
    assert (cache() / "train-images-idx3-ubyte.gz").read_bytes() == good
    expected = (f"after {len(half)} of {len(good)} bytes" if cut == "connection closed early"
                else "not a complete gzip file")
    assert expected in capsys.readouterr().err


def test_a_recompressed_file_with_the_same_content_is_accepted(fashion, mirror):
    """The check is on the decompressed IDX content: a mirror may recompress (Debian's package does)."""
    official = mirror.files["train-images-idx3-ubyte.gz"][0]
    recompressed = gzip.compress(fashion["train-images-idx3-ubyte"], compresslevel=1, mtime=12345)
    assert recompressed != official
    mirror.files["train-images-idx3-ubyte.gz"] = [recompressed]
    load()
    assert mirror.requests.count("train-images-idx3-ubyte.gz") == 1
    assert (cache() / "train-images-idx3-ubyte.gz").read_bytes() == recompressed


def test_wrong_content_is_refused_with_the_url_and_the_mismatch(fashion, mirror):
    wrong = bytearray(fashion["t10k-images-idx3-ubyte"])
    wrong[-1] ^= 1  # one pixel
    wrong = bytes(wrong)
    mirror.files["t10k-images-idx3-ubyte.gz"] = [gzip.compress(wrong)]
    with pytest.raises(DataError) as info:
        load()
    message = str(info.value)
    url = mirror.url + "t10k-images-idx3-ubyte.gz"
    assert url in message and MIRROR_ENV in message
    assert (f"the decompressed content has MD5 {hashlib.md5(wrong).hexdigest()}, expected "
            f"{data_module.FASHION_MNIST_MD5['t10k-images-idx3-ubyte']}") in message
    assert mirror.requests.count("t10k-images-idx3-ubyte.gz") == 2  # fetched again once, then refused
    assert not any(mirror.final_seen)
    assert not (cache() / "t10k-images-idx3-ubyte.gz").exists()
    assert leftovers(cache()) == []


def test_a_missing_file_on_the_mirror_is_a_clear_error(fashion, mirror):
    del mirror.files["train-labels-idx1-ubyte.gz"]
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*404"):
        load()
    assert leftovers(cache()) == []


def test_no_download_when_disabled_or_a_root_is_given(fashion, mirror, tmp_path):
    with pytest.raises(DataError, match=f"`acdc-bench download fashion-mnist`.*{cache()}"):
        load(download=False)
    given = tmp_path / "given"
    with pytest.raises(DataError, match=f"download=True downloads it into that root.*{cache()}"):
        load(root=given)
    assert mirror.requests == [] and not given.exists()
    mirror.watch = given
    assert load(root=given, download=True).train_size == 101
    assert all((given / (stem + ".gz")).is_file() for stem in STEMS)


def test_concurrent_callers_share_one_download(fashion, mirror):
    """The workers of reproduce and the ranks of a run wait for one download (a file lock)."""
    errors = []

    def fetch():
        try:
            download_dataset("fashion-mnist")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(mirror.requests) == sorted(stem + ".gz" for stem in STEMS)


# --------------------------------------------------------------------------- CIFAR-100


@pytest.fixture
def cifar_archive(cifar_root, mirror, monkeypatch) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(cifar_root / "cifar-100-python", arcname="cifar-100-python")
    archive = buffer.getvalue()
    monkeypatch.setattr(data_module, "CIFAR100_ARCHIVE_MD5", hashlib.md5(archive).hexdigest())
    mirror.watch = cache("cifar100")
    return archive


def test_cifar100_download_is_checked_before_extraction(cifar_archive, mirror):
    corrupt = bytearray(cifar_archive)
    corrupt[len(corrupt) // 2] ^= 0xFF
    mirror.files["cifar-100-python.tar.gz"] = [bytes(corrupt), cifar_archive]
    with pytest.raises(DataError, match="`acdc-bench download cifar100`"):
        load_data("cifar100", root=None, batch_size=32, seed=0)  # not downloaded unless asked
    assert mirror.requests == []
    data = load_data("cifar100", root=None, batch_size=32, seed=0, download=True)
    assert (data.train_size, data.test_size) == (96, 32)
    assert mirror.requests == ["cifar-100-python.tar.gz"] * 2 and not any(mirror.final_seen)
    assert sorted(p.name for p in cache("cifar100").iterdir()) == [".download.lock", "cifar-100-python"]


def test_the_download_command_fetches_into_the_cache_and_says_where(cifar_archive, mirror, capsys):
    from acdc_bench.cli import main

    mirror.files["cifar-100-python.tar.gz"] = [cifar_archive]
    assert main(["download", "cifar100"]) == 0
    assert capsys.readouterr().out.strip() == f"cifar100: in {cache('cifar100')}"
    assert (cache("cifar100") / "cifar-100-python" / "train").is_file()
    assert main(["download", "cifar100"]) == 0 and mirror.requests == ["cifar-100-python.tar.gz"]  # once


def test_cifar100_wrong_archive_is_refused_and_nothing_extracted(cifar_archive, mirror):
    mirror.files["cifar-100-python.tar.gz"] = [cifar_archive + b"extra"]
    with pytest.raises(DataError) as info:
        load_data("cifar100", root=None, batch_size=32, seed=0, download=True)
    message = str(info.value)
    assert mirror.url + "cifar-100-python.tar.gz" in message
    assert f"expected {data_module.CIFAR100_ARCHIVE_MD5}" in message
    assert sorted(p.name for p in cache("cifar100").iterdir()) == [".download.lock"]


# ------------------------------------------------------------------ the real checksums


@pytest.mark.skipif(not all((FASHION_ROOT / (stem + ".gz")).is_file() for stem in STEMS),
                    reason=f"the Debian package dataset-fashion-mnist is not installed at {FASHION_ROOT}")
def test_the_checksum_table_matches_the_debian_package():
    """Debian's .gz files are not the official ones; their decompressed content is."""
    for stem in STEMS:
        content = gzip.decompress((FASHION_ROOT / (stem + ".gz")).read_bytes())
        assert hashlib.md5(content).hexdigest() == data_module.FASHION_MNIST_MD5[stem], stem

"""Cloud storage on the S3 protocol: a real S3 server (moto, with IAM auth) on 127.0.0.1."""

import json
import os
import time

import pytest
import ray
from conftest import free_port

from colorjob import config as cfgmod
from colorjob import storage
from colorjob.batch import BatchConfig, execute
from colorjob.tune import TuneConfig
from colorjob.tune import search as tune_run

BUCKET = "colorjob"


@pytest.fixture(scope="module")
def s3():
    """An S3 server that checks credentials, a user allowed everything, a bucket; Ray sees the env."""
    boto3 = pytest.importorskip("boto3")
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "4"  # IAM set-up calls, then every call is checked
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    anon = {
        "endpoint_url": url,
        "region_name": "us-east-1",
        "aws_access_key_id": "setup",
        "aws_secret_access_key": "setup",
    }
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="ci")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    arn = iam.create_policy(PolicyName="all", PolicyDocument=json.dumps(policy))["Policy"]["Arn"]
    iam.attach_user_policy(UserName="ci", PolicyArn=arn)
    key = iam.create_access_key(UserName="ci")["AccessKey"]
    env = {
        "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "RAY_USAGE_STATS_ENABLED": "0",
    }  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    # Ray's workers must see the server's address and credentials: a Ray of its own, started
    # after them (the shared one, if this process had started it, is restarted afterwards).
    ray.shutdown()
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
        log_to_driver=False,
    )  # fmt: skip
    yield url
    ray.shutdown()
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
def test_tune_with_dataset_and_storage_on_s3_then_batch_s3_to_s3(s3, chars):
    storage.upload_dir(chars, f"s3://{BUCKET}/data/chars")
    cfg = cfgmod.from_dict(
        TuneConfig,
        {
            "name": "s3tune", "storage_path": f"s3://{BUCKET}/results", "num_samples": 2,
            "resources": {"cpu": 1}, "scheduler": {"asha": False}, "max_failures": 0,
            "train": {"data": f"s3://{BUCKET}/data/chars", "image_size": 32, "ngf": 8, "ndf": 8, "epochs": 1,
                      "batch_size": 8, "val_fraction": 0.25},
        },
    )  # fmt: skip
    best = tune_run(cfg)
    assert best == f"s3://{BUCKET}/results/s3tune/best"
    fs, root = storage.resolve(f"s3://{BUCKET}/results/s3tune")
    names = storage.list_files(fs, root)
    assert {"trials.csv", "trials.png", "best/generator.safetensors", "best/model.json"} <= set(
        names
    )

    # batch: sketches from the bucket, the model from the bucket, outputs to the bucket
    fs_data, data_root = storage.resolve(f"s3://{BUCKET}/data/chars")
    for rel in ("sketches/char_0000.png", "sketches/char_0001.png"):
        storage.write_atomic(
            fs,
            f"{BUCKET}/in/{rel.split('/')[-1]}",
            storage.read_bytes(fs_data, storage.join(data_root, rel)),
        )
    grid = f"s3://{BUCKET}/grid.csv"
    storage.write_atomic(fs, f"{BUCKET}/grid.csv", b"hair,shirt\nblack,red\nblonde,navy\n")
    out = f"s3://{BUCKET}/out"
    m = execute(
        BatchConfig(input=f"s3://{BUCKET}/in", conditions=grid, model=best, output=out)
    ).read_manifest()
    assert len(m) == 4 and (m["status"] == "ok").all()
    made = set(storage.list_files(fs, f"{BUCKET}/out"))
    assert {
        "char_0000__black_red.png",
        "char_0001__blonde_navy.png",
        "manifest/shard=00000/part.parquet",
        "contact_sheet.png",
    } <= made
    import pyarrow.dataset as pads

    manifest = pads.dataset(f"{BUCKET}/out/manifest", filesystem=fs, partitioning="hive").to_table().to_pandas()  # fmt: skip
    assert len(manifest) == 4 and (manifest["width"] == 32).all()


def test_wrong_bucket_and_missing_credentials_are_clear_errors(s3, trained, monkeypatch, tmp_path):
    model = str(trained[0].out) + "/best"
    (tmp_path / "in").mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), "white").save(tmp_path / "in" / "a.png")
    grid = str(tmp_path / "grid.csv")
    (tmp_path / "grid.csv").write_text("hair,shirt\nblack,red\n")
    with pytest.raises(
        storage.StorageError, match=r"s3://no-such-bucket/out.*bucket does not exist"
    ):
        execute(
            BatchConfig(
                input=str(tmp_path / "in"),
                conditions=grid,
                model=model,
                output="s3://no-such-bucket/out",
            )
        )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(storage.StorageError, match="no AWS credentials were found"):
        execute(
            BatchConfig(
                input=str(tmp_path / "in"),
                conditions=grid,
                model=model,
                output=f"s3://{BUCKET}/out2",
            )
        )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(storage.StorageError, match="access denied"):
        storage.check(f"s3://{BUCKET}/out3", writable=True)


def test_the_node_cache_follows_the_bucket_and_refuses_keys_that_leave_it(
    s3, chars, tmp_path, monkeypatch
):
    monkeypatch.setenv("COLORJOB_CACHE", str(tmp_path / "cache"))
    uri = f"s3://{BUCKET}/data/cache-test"
    storage.upload_dir(chars, uri)
    local = storage.local_copy(uri)
    assert (local / "metadata.csv").read_bytes() == (chars / "metadata.csv").read_bytes()
    fs, root = storage.resolve(uri)
    fewer = "\n".join((chars / "metadata.csv").read_text().splitlines()[:26]) + "\n"
    time.sleep(1.1)  # S3 times are in seconds: the change must show in the listing
    storage.write_atomic(fs, storage.join(root, "metadata.csv"), fewer.encode())
    storage.write_atomic(fs, storage.join(root, "extra.txt"), b"new")
    again = storage.local_copy(uri)
    assert again == local and (again / "metadata.csv").read_text() == fewer  # refreshed
    assert (again / "extra.txt").read_bytes() == b"new"
    fs.delete_file(storage.join(root, "extra.txt"))
    assert not (storage.local_copy(uri) / "extra.txt").exists()  # gone remotely, gone here
    boto3 = pytest.importorskip("boto3")
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    client.put_object(Bucket=BUCKET, Key="data/evil/../../escape.txt", Body=b"x")
    with pytest.raises(storage.StorageError, match="would leave its folder"):
        storage.local_copy(f"s3://{BUCKET}/data/evil")
    assert not (tmp_path / "cache" / "escape.txt").exists()

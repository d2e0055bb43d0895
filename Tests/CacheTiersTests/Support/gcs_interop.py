"""Google's official GCS client (google-cloud-storage), for interoperability tests.

    gcs_interop.py download BUCKET OBJECT FILE   download with CRC32C validation
    gcs_interop.py upload BUCKET OBJECT FILE     upload as a resumable upload

STORAGE_EMULATOR_HOST points the client at the emulator; credentials are anonymous.
"""
import json
import sys

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage


def main():
    command, bucket_name, object_name, path = sys.argv[1:5]
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.bucket(bucket_name)
    if command == "download":
        blob = bucket.get_blob(object_name)
        if blob is None:
            sys.exit(f"no object {object_name}")
        blob.download_to_filename(path, checksum="crc32c")
        print(json.dumps({"size": blob.size, "crc32c": blob.crc32c, "metadata": blob.metadata or {}}))
    elif command == "upload":
        blob = bucket.blob(object_name, chunk_size=256 * 1024)
        blob.upload_from_filename(path, content_type="application/zstd", checksum="crc32c")
        print(json.dumps({"generation": blob.generation}))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()

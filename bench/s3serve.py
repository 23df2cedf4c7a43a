#!/usr/bin/env python3
"""A small multi-threaded S3-compatible server for benchmarks (not for production, not for tests of
S3 semantics: the integration tests use s3rver).

s3rver is single-threaded (about 0.6 GB/s), so on a many-core host it, not lmfs, would be the
ceiling. This one serves each connection on its own thread and sends object bodies with
os.sendfile (the GIL is released while the kernel copies), so with objects on tmpfs it serves
several GB/s on loopback. Every report that uses it measures its ceiling in the same run
(`lmfs bench`'s parallel-GET probe), so its own speed is never mistaken for lmfs's.

Supports what lmfs and the AWS CLI use: PUT/GET (with Range)/HEAD/DELETE of objects, PUT/HEAD of a
bucket, ListObjectsV2 (prefix, max-keys, continuation-token). Signatures are not checked: anyone who can reach the port can read and write
the buckets (never anything outside --root); it listens on loopback only unless told otherwise.

  s3serve.py --root DIR [--port 0] [--host 127.0.0.1] [--port-file FILE]

Buckets are directories under DIR; an object key is a file path under its bucket (keys ending in
'/' or containing '..' are refused).
"""
import argparse, datetime, email.utils, hashlib, os, sys, threading, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "s3serve"

    def log_message(self, *args):  # quiet: a benchmark server must not spend its time logging
        pass

    # --- helpers -------------------------------------------------------------------------
    def _split(self):
        u = urllib.parse.urlsplit(self.path)
        parts = urllib.parse.unquote(u.path).lstrip("/").split("/", 1)
        bucket = parts[0]
        key = parts[1] if len(parts) > 1 else ""
        return bucket, key, urllib.parse.parse_qs(u.query, keep_blank_values=True)

    def _file(self, bucket, key):
        # A key is a relative path of non-empty segments: no leading '/', no '//', no '.' or '..'
        # (os.path.join would let "/etc/passwd" or "a/../../x" out of the bucket).
        parts = key.split("/")
        if not bucket or "/" in bucket or bucket in (".", "..") or any(p in ("", ".", "..") for p in parts):
            return None
        base = os.path.realpath(os.path.join(self.server.root, bucket))
        path = os.path.realpath(os.path.join(base, key))
        return path if path.startswith(base + os.sep) else None

    def _reply(self, code, body=b"", ctype="application/xml", headers=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code, s3code, msg):
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{s3code}</Code><Message>{escape(msg)}</Message></Error>'.encode()
        self._reply(code, body)

    def _drain(self):
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                break
            n -= len(chunk)

    # --- verbs ---------------------------------------------------------------------------
    def do_PUT(self):
        bucket, key, _ = self._split()
        if not key:
            self._drain()
            if self._file(bucket, "x") is None:
                return self._error(400, "InvalidBucketName", "bad bucket name")
            os.makedirs(os.path.join(self.server.root, bucket), exist_ok=True)
            return self._reply(200)
        path = self._file(bucket, key)
        if path is None:
            self._drain()
            return self._error(400, "InvalidArgument", "bad key")
        if not os.path.isdir(os.path.join(self.server.root, bucket)):
            self._drain()
            return self._error(404, "NoSuchBucket", "no such bucket")
        if "chunked" in (self.headers.get("Transfer-Encoding") or "") or "aws-chunked" in (self.headers.get("Content-Encoding") or ""):
            self._drain()
            return self._error(501, "NotImplemented", "chunked uploads are not supported; send Content-Length")
        n = int(self.headers.get("Content-Length") or 0)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{threading.get_ident()}.tmp"
        md5 = hashlib.md5()
        with open(tmp, "wb") as f:
            left = n
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                md5.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        if left > 0:
            os.unlink(tmp)
            return self._error(400, "IncompleteBody", "body shorter than Content-Length")
        os.replace(tmp, path)
        self._reply(200, headers={"ETag": f'"{md5.hexdigest()}"'})

    def do_DELETE(self):
        bucket, key, _ = self._split()
        path = self._file(bucket, key)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._reply(204)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        bucket, key, q = self._split()
        if not key:
            if not os.path.isdir(os.path.join(self.server.root, bucket)):
                return self._error(404, "NoSuchBucket", "no such bucket")
            if self.command == "HEAD":
                return self._reply(200)
            return self._list(bucket, q)
        path = self._file(bucket, key)
        try:
            f = open(path, "rb") if path else None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            f = None
        if f is None:
            return self._error(404, "NoSuchKey", "no such key")
        with f:
            st = os.fstat(f.fileno())
            size, start, end, code = st.st_size, 0, st.st_size - 1, 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                if a == "":
                    start = max(0, size - int(b))
                else:
                    start = int(a)
                    end = min(size - 1, int(b)) if b else size - 1
                if start >= size:
                    return self._error(416, "InvalidRange", "range not satisfiable")
                code = 206
            n = end - start + 1
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{int(st.st_mtime_ns):x}-{size:x}"')
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            self.wfile.flush()
            out, off = self.connection.fileno(), start
            while n > 0:
                sent = os.sendfile(out, f.fileno(), off, n)
                if sent == 0:
                    break
                off += sent
                n -= sent

    def _list(self, bucket, q):
        prefix = q.get("prefix", [""])[0]
        maxkeys = min(1000, int(q.get("max-keys", ["1000"])[0] or 1000))
        after = q.get("continuation-token", [""])[0] or q.get("start-after", [""])[0]
        base = os.path.join(self.server.root, bucket)
        keys = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.endswith(".tmp"):
                    continue
                k = os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/")
                if k.startswith(prefix) and k > after:
                    keys.append(k)
        keys.sort()
        page, truncated = keys[:maxkeys], len(keys) > maxkeys
        items = []
        for k in page:
            st = os.stat(os.path.join(base, k))
            iso = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            items.append(f"<Contents><Key>{escape(k)}</Key><LastModified>{iso}</LastModified><Size>{st.st_size}</Size><StorageClass>STANDARD</StorageClass></Contents>")
        token = f"<NextContinuationToken>{escape(page[-1])}</NextContinuationToken>" if truncated else ""
        body = (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount>"
                f"<MaxKeys>{maxkeys}</MaxKeys><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{token}{''.join(items)}</ListBucketResult>").encode()
        self._reply(200, body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    a = ap.parse_args()
    os.makedirs(a.root, exist_ok=True)
    srv = Server((a.host, a.port), Handler)
    srv.root = os.path.abspath(a.root)
    port = srv.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(a.port_file + ".tmp", a.port_file)
    print(f"s3serve: http://{a.host}:{port} serving {srv.root}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""Python stubs for the node's protos, generated with grpcio-tools into a temporary
directory that is put on sys.path: the clients here import them as `tongban.<pkg>`."""
import sys
import tempfile

from grpc_tools import protoc


def generate(proto_root: str, *protos: str, grpc: bool = True) -> None:
    """Generates the message (and, with `grpc`, service) modules of `protos`; raises
    RuntimeError when protoc fails."""
    out = tempfile.mkdtemp(prefix="tongban-py-")
    args = ["protoc", f"-I{proto_root}", f"--python_out={out}"]
    if grpc:
        args.append(f"--grpc_python_out={out}")
    rc = protoc.main(args + list(protos))
    if rc != 0:
        raise RuntimeError(f"protoc failed with {rc}")
    sys.path.insert(0, out)

namespace LazyModelFs.Csi.Grpc;

/// <summary>The canonical gRPC status codes (grpc/doc/statuscodes.md) that CSI names.</summary>
public enum StatusCode
{
    OK = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// <summary>An RPC's failure: becomes the grpc-status and grpc-message trailers of the reply.</summary>
public sealed class RpcException(StatusCode code, string message) : Exception(message)
{
    public StatusCode Code { get; } = code;

    public static RpcException InvalidArgument(string message) => new(StatusCode.InvalidArgument, message);

    public static RpcException NotFound(string message) => new(StatusCode.NotFound, message);

    public static RpcException FailedPrecondition(string message) => new(StatusCode.FailedPrecondition, message);

    public static RpcException AlreadyExists(string message) => new(StatusCode.AlreadyExists, message);
}

using System.CommandLine;
using LazyModelFs.Storage;
using LazyModelFs.Util;

namespace LazyModelFs.Cli.Commands;

internal static class FormatCommand
{
    public static Command Build()
    {
        var meta = Common.MetaUrl();
        var storage = new Option<string>("--storage", "-s") { Description = "Object store: file:///DIR or s3://BUCKET/PREFIX", Required = true };
        var chunkSize = Numeric.Size("--chunk-size", "Chunk size, a power of two", "4M", Volume.MinChunkSize, Volume.MaxChunkSize);
        var blockSize = Numeric.Size("--block-size", "Bytes per hashed block of a chunk: a READ fetches and verifies only the blocks it touches (format version 2). 0: format version 1, no block hashes (whole-chunk reads; readable by lmfs releases before 2026-12)", "256K", 0, Volume.MaxChunkSize);
        var compression = new Option<string>("--compression") { Description = "Chunk codec", DefaultValueFactory = _ => "none" };
        compression.AcceptOnlyFromAmong("none", "zstd");
        var name = new Option<string>("--name") { Description = "A name for the volume, shown by lmfs stat", DefaultValueFactory = _ => "lmfs" };
        var endpoint = new Option<string?>("--endpoint") { Description = "S3 endpoint URL for S3-compatible servers, e.g. http://127.0.0.1:9000" };
        var region = new Option<string?>("--region") { Description = "S3 region (default: AWS_REGION or us-east-1)" };
        var pathStyle = new Option<bool?>("--path-style") { Description = "Path-style S3 addressing (default: on when --endpoint is given)" };
        var creds = new Common.Credentials();

        var cmd = new Command("format", "Create a volume: settings and an empty root directory in the metadata engine.\n\nExamples:\n  lmfs format sqlite:///var/lib/lmfs/meta.db --storage file:///var/lib/lmfs/objects\n  lmfs format redis://127.0.0.1:6379/1 --storage s3://models/lmfs --endpoint http://127.0.0.1:9000")
        {
            meta, storage, chunkSize, blockSize, compression, name, endpoint, region, pathStyle,
        };
        creds.AddTo(cmd);
        cmd.SetAction((p, ct) => Cli.Guard(p, async () =>
        {
            var opts = creds.Read(p, new StorageOptions { Endpoint = p.GetValue(endpoint), Region = p.GetValue(region), PathStyle = p.GetValue(pathStyle) });
            var s = await Volume.FormatAsync(p.GetValue(meta)!, p.GetValue(storage)!, opts, (int)p.GetValue(chunkSize).Bytes, p.GetValue(compression)!, p.GetValue(name)!, (int)p.GetValue(blockSize).Bytes, ct).ConfigureAwait(false);
            Console.WriteLine($"formatted volume '{TerminalText.Safe(s.Name)}' ({s.Uuid})");
            Console.WriteLine($"  metadata:    {Redact.Url(p.GetValue(meta)!)}");
            Console.WriteLine($"  storage:     {s.Storage}");
            Console.WriteLine($"  chunk size:  {Sizes.Format(s.ChunkSize)}, compression: {s.Compression}");
            Console.WriteLine(s.BlockSize == 0 ? $"  format:      version {s.FormatVersion}, no block hashes (whole-chunk reads)" : $"  format:      version {s.FormatVersion}, block hashes every {Sizes.Format(s.BlockSize)}");
            return 0;
        }));
        return cmd;
    }
}

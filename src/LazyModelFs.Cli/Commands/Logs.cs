using System.Globalization;
using System.Text;
using LazyModelFs.Util;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.Options;

namespace LazyModelFs.Cli.Commands;

/// <summary>
/// The daemons' logs (lmfs mount, lmfs csi): one line per entry, as the simple console formatter's
/// single-line form writes it (<c>2026-01-01T12:00:00.000 info: vfs[0] message</c>), with every
/// unsafe character escaped (<see cref="TerminalText.Safe"/>): log lines carry file names from the
/// volume, and a log is read with less, tail or a terminal (issue 11, item 14). Escaping happens
/// here, at the sink, so no logging call site has to remember it.
/// </summary>
internal static class Logs
{
    public static ILoggerFactory Create(LogLevel minimum) => LoggerFactory.Create(b => b
        .AddConsole(o => o.FormatterName = SafeLineFormatter.FormatterName)
        .AddConsoleFormatter<SafeLineFormatter, ConsoleFormatterOptions>(o => o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fff ")
        .SetMinimumLevel(minimum));

    internal sealed class SafeLineFormatter(IOptionsMonitor<ConsoleFormatterOptions> options) : ConsoleFormatter(FormatterName)
    {
        public const string FormatterName = "lmfs";

        public override void Write<TState>(in LogEntry<TState> logEntry, IExternalScopeProvider? scopeProvider, TextWriter textWriter)
        {
            string? message = logEntry.Formatter?.Invoke(logEntry.State, logEntry.Exception);
            if (message is null && logEntry.Exception is null)
            {
                return;
            }

            var o = options.CurrentValue;
            var line = new StringBuilder();
            if (o.TimestampFormat is { } ts)
            {
                line.Append((o.UseUtcTimestamp ? DateTimeOffset.UtcNow : DateTimeOffset.Now).ToString(ts, CultureInfo.InvariantCulture));
            }

            line.Append(Level(logEntry.LogLevel)).Append(": ").Append(logEntry.Category).Append('[').Append(logEntry.EventId.Id).Append("] ").Append(message);
            if (logEntry.Exception is { } ex)
            {
                line.Append(' ').Append(ex.ToString().ReplaceLineEndings(" "));
            }

            textWriter.Write(TerminalText.Safe(line.ToString()));
            textWriter.Write('\n');
        }

        private static string Level(LogLevel l) => l switch
        {
            LogLevel.Trace => "trce",
            LogLevel.Debug => "dbug",
            LogLevel.Information => "info",
            LogLevel.Warning => "warn",
            LogLevel.Error => "fail",
            LogLevel.Critical => "crit",
            _ => "none",
        };
    }
}

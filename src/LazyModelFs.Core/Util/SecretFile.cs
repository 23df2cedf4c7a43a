namespace LazyModelFs.Util;

/// <summary>
/// A secret kept in a file (a Redis password, a peer secret): its first line, from a file only its
/// owner can read, owned by this user or root. Anything else is refused with exit 2 saying what to fix:
/// a secret other users can read, or one another user can change, is not a secret of ours.
/// </summary>
public static class SecretFile
{
    /// <param name="what">How the file was named to us, for messages (e.g. "--peer-secret-file").</param>
    public static string Read(string path, string what)
    {
        if (!File.Exists(path))
        {
            throw new LmfsException($"{what} '{TerminalText.Safe(path)}' does not exist", "write the secret into that file (chmod 600)", 2);
        }

        if ((File.GetUnixFileMode(path) & (UnixFileMode.GroupRead | UnixFileMode.OtherRead | UnixFileMode.GroupWrite | UnixFileMode.OtherWrite)) != 0)
        {
            throw new LmfsException($"{what} '{TerminalText.Safe(path)}' is readable (or writable) by other users", $"chmod 600 {TerminalText.Safe(path)}", 2);
        }

        uint owner = Posix.Stat(path).Uid;
        if (owner != Posix.EUid && owner != 0)
        {
            throw new LmfsException($"{what} '{TerminalText.Safe(path)}' belongs to uid {owner}, not to this user or root", $"chown {Posix.EUid} {TerminalText.Safe(path)} (and chmod 600)", 2);
        }

        try
        {
            return File.ReadAllText(path).Split('\n')[0].TrimEnd('\r');
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new LmfsException($"cannot read {what} '{TerminalText.Safe(path)}': {ex.Message}", "check the file and its permissions", 2);
        }
    }
}

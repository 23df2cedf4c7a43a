using LazyModelFs.Cli;

return await Cli.RunAsync(args).ConfigureAwait(false);

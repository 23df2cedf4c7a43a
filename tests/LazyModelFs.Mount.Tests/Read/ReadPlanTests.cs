using LazyModelFs.Util;
using LazyModelFs.Vfs;
using Xunit;

namespace LazyModelFs.Mount.Tests.Read;

/// <summary>The one grammar of read plans (`lmfs plan` input and the control socket's plan command).</summary>
public class ReadPlanTests
{
    [Fact]
    public void Ranges_parse_in_either_form_with_commas_newlines_and_comments()
    {
        Assert.Equal([(0L, 8L), (100L, 5L), (7L, 1L), (9L, 2L)], ReadPlan.Parse("0:8, 100 5\n# the header\n7:1,\n\t9\t2\n"));
        Assert.Empty(ReadPlan.Parse("  \n# nothing\n"));
    }

    [Theory]
    [InlineData("12:abc")]
    [InlineData("12:0")]
    [InlineData("-1:5")]
    [InlineData("1:2:3")]
    [InlineData("99999999999999999999:1")]
    public void A_malformed_range_is_refused_with_exit_2_naming_it(string bad)
    {
        var e = Assert.Throws<LmfsException>(() => ReadPlan.Parse("0:1," + bad));
        Assert.Equal(2, e.ExitCode);
        Assert.Contains("is not OFFSET:LENGTH", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Plans_are_bounded_in_ranges_and_in_command_length()
    {
        var many = string.Join(',', Enumerable.Range(0, ReadPlan.MaxRanges + 1).Select(i => $"{i}:1"));
        Assert.Contains("more than", Assert.Throws<LmfsException>(() => ReadPlan.Parse(many)).Message, StringComparison.Ordinal);
        var fits = Enumerable.Range(0, 1000).Select(i => ((long)i << 22, 1L << 22)).ToList();
        Assert.Equal(fits, ReadPlan.Parse(ReadPlan.Command(7, fits)["plan 7 ".Length..]));
        var huge = Enumerable.Range(0, ReadPlan.MaxRanges).Select(i => (long.MaxValue - i, long.MaxValue)).ToList();
        Assert.Contains("at most", Assert.Throws<LmfsException>(() => ReadPlan.Command(7, huge)).Message, StringComparison.Ordinal);
    }
}

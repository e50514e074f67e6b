class Program
{
    static void Main()
    {
        System.Console.WriteLine("runner-test: csharp ok");
    }
}

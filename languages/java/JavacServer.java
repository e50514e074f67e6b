// javac's compile server (docs/agent.md, "Compile servers"): started by the guest agent in a VM
// waiting in the pool, in the work dir of the next job, as
//   java ... -cp /opt/runner/languages/java JavacServer SOCKET
// It compiles a few programs the way a job's would be compiled (so that the JVM has loaded,
// and its JIT compiled, javac's classes, and QEMU translated that code), listens on the unix
// socket SOCKET and prints `ready`; then answers one connection (runner-exec --connect: the
// working directory and javac's arguments, each ended by a NUL byte) and exits. What javac
// wrote to stdout and to stderr goes back as frames (a kind byte, a 4-byte big-endian length,
// the bytes), then the exit status; a working directory other than this process's own, or a
// launcher option (-J...), is declined before anything is written back, and the client then
// runs javac itself. Compiled when the layer is built (language.json's prepare).
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.stream.Stream;
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;

public final class JavacServer {
  private static final byte STDOUT = 1;
  private static final byte STDERR = 2;
  private static final byte STATUS = 3;
  private static final byte DECLINE = 4;

  /** A program that uses what jobs use: imports, generics, lambdas, streams, records, I/O. */
  private static final String REHEARSAL =
      String.join(
          "\n",
          "import java.io.*;",
          "import java.util.*;",
          "import java.util.stream.*;",
          "public class Main {",
          "  record Point(int x, int y) { int sum() { return x + y; } }",
          "  interface Shape { double area(); }",
          "  static final class Square implements Shape {",
          "    private final double side;",
          "    Square(double side) { this.side = side; }",
          "    public double area() { return side * side; }",
          "  }",
          "  static <T extends Comparable<T>> T max(List<T> items) {",
          "    return items.stream().max(Comparator.naturalOrder()).orElseThrow();",
          "  }",
          "  public static void main(String[] args) throws IOException {",
          "    BufferedReader in = new BufferedReader(new InputStreamReader(System.in));",
          "    Map<String, Integer> counts = new HashMap<>();",
          "    String line;",
          "    while ((line = in.readLine()) != null)",
          "      for (String w : line.split(\" \")) counts.merge(w, 1, Integer::sum);",
          "    List<Point> points = IntStream.range(0, 5).mapToObj(i -> new Point(i, i * i)).collect(Collectors.toList());",
          "    Shape s = new Square(2.5);",
          "    StringBuilder sb = new StringBuilder();",
          "    for (Point p : points) sb.append(p.sum()).append(',');",
          "    System.out.printf(\"%s %.2f %d %s%n\", sb, s.area(), max(Arrays.asList(3, 9, 4)), counts);",
          "    Scanner sc = new Scanner(\"1 2 3\");",
          "    long total = 0;",
          "    while (sc.hasNextInt()) total += sc.nextInt();",
          "    System.out.println(total);",
          "  }",
          "}",
          "");

  private static final String TYPE_ERROR =
      "public class Main {\n"
          + "  public static void main(String[] args) {\n"
          + "    int n = \"one\";\n"
          + "    undefinedCall(n);\n"
          + "  }\n"
          + "}\n";

  public static void main(String[] args) throws Exception {
    if (args.length != 1) {
      System.err.println("usage: JavacServer SOCKET");
      System.exit(2);
    }
    // As the javac launcher sets them: with application.home set, javac's class path defaults
    // to CLASSPATH or ".", not to this process's own class path.
    System.setProperty("application.home", System.getProperty("java.home"));
    String classPath = System.getenv("CLASSPATH");
    if (classPath != null) System.setProperty("env.class.path", classPath);
    JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
    if (javac == null) throw new IllegalStateException("no system Java compiler");
    rehearse(javac);
    Path socket = Path.of(args[0]);
    try (ServerSocketChannel server = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
      server.bind(UnixDomainSocketAddress.of(socket));
      System.out.println("ready");
      System.out.flush();
      try (SocketChannel client = server.accept()) {
        server.close();
        answer(javac, client);
      }
    }
    System.exit(0);
  }

  /** Compiles the rehearsal programs in a folder of TMPDIR (the work dir), then removes it. */
  private static void rehearse(JavaCompiler javac) throws IOException {
    String tmp = System.getenv("TMPDIR");
    Path dir = Files.createTempDirectory(Path.of(tmp == null ? "/tmp" : tmp), "javac-serve-");
    try {
      Path main = dir.resolve("Main.java");
      String[][] programs = {{REHEARSAL, "0"}, {TYPE_ERROR, "1"}, {REHEARSAL, "0"}};
      for (String[] program : programs) {
        Files.writeString(main, program[0]);
        ByteArrayOutputStream sink = new ByteArrayOutputStream();
        int status =
            javac.run(
                null, sink, sink, "-encoding", "UTF-8", "-d", dir.toString(), main.toString());
        if (status != Integer.parseInt(program[1]))
          throw new IllegalStateException(
              "a rehearsal compile ended " + status + ": " + sink.toString(StandardCharsets.UTF_8));
      }
    } finally {
      try (Stream<Path> walk = Files.walk(dir)) {
        for (Path p : walk.sorted(Comparator.reverseOrder()).toList()) Files.deleteIfExists(p);
      }
    }
  }

  private static void answer(JavaCompiler javac, SocketChannel client) throws IOException {
    InputStream in = java.nio.channels.Channels.newInputStream(client);
    byte[] request = in.readAllBytes();
    List<String> fields = new ArrayList<>();
    int start = 0;
    for (int i = 0; i < request.length; i++) {
      if (request[i] == 0) {
        fields.add(new String(request, start, i - start, StandardCharsets.UTF_8));
        start = i + 1;
      }
    }
    String here = Path.of("").toAbsolutePath().toString();
    boolean mine = !fields.isEmpty() && fields.get(0).equals(here);
    for (String a : fields) if (a.startsWith("-J")) mine = false;
    if (!mine) {
      write(client, frame(DECLINE, new byte[0]));
      return;
    }
    String[] javacArgs = fields.subList(1, fields.size()).toArray(new String[0]);
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    ByteArrayOutputStream err = new ByteArrayOutputStream();
    int status = javac.run(null, out, err, javacArgs);
    write(client, frame(STDOUT, out.toByteArray()));
    write(client, frame(STDERR, err.toByteArray()));
    write(client, frame(STATUS, new byte[] {(byte) status}));
  }

  private static ByteBuffer frame(byte kind, byte[] bytes) {
    ByteBuffer b = ByteBuffer.allocate(5 + bytes.length);
    b.put(kind).putInt(bytes.length).put(bytes).flip();
    return b;
  }

  private static void write(SocketChannel client, ByteBuffer b) throws IOException {
    while (b.hasRemaining()) client.write(b);
  }
}

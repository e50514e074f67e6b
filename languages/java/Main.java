public class Main {
    public static void main(String[] args) {
        String lang = "java";
        System.out.println("runner-test: " + lang + " ok");
    }
}

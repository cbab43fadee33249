package mcpserver.demo;

/** The interface the test provider exports; its name becomes the ServiceEntry host. */
public interface GreetingService {
    String greet(String name);
}

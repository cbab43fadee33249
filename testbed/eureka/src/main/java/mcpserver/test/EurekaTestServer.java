package mcpserver.test;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.cloud.netflix.eureka.server.EnableEurekaServer;
import org.springframework.context.annotation.Bean;
import org.springframework.security.config.Customizer;
import org.springframework.security.config.annotation.web.builders.HttpSecurity;
import org.springframework.security.web.SecurityFilterChain;

/**
 * A plain Eureka server, as Spring Cloud estates run one. Settings come from
 * application.properties and the command line (ports, peers, lease timers).
 *
 * <p>With {@code --mcpserver.test.basic-auth=true} every request needs HTTP basic auth
 * ({@code spring.security.user.name/password}), as Spring's guide secures a Eureka server;
 * otherwise everything is open. CSRF is off either way: Eureka clients POST and PUT without
 * a token.
 */
@SpringBootApplication
@EnableEurekaServer
public class EurekaTestServer {

    public static void main(String[] args) {
        SpringApplication.run(EurekaTestServer.class, args);
    }

    @Bean
    SecurityFilterChain security(
            HttpSecurity http, @Value("${mcpserver.test.basic-auth:false}") boolean basicAuth)
            throws Exception {
        http.csrf(csrf -> csrf.disable());
        if (basicAuth) {
            http.authorizeHttpRequests(requests -> requests.anyRequest().authenticated())
                    .httpBasic(Customizer.withDefaults());
        } else {
            http.authorizeHttpRequests(requests -> requests.anyRequest().permitAll());
        }
        return http.build();
    }
}

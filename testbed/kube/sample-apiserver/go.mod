// Stands in for k8s.io/sample-apiserver, which k8s.io/kubernetes requires but the module
// proxy refuses at v0.35.3; nothing the tests build imports it.
module k8s.io/sample-apiserver

go 1.25.0

package cluster

import (
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ClientOptions say how to reach the API server: a kubeconfig file, or a URL
// with a bearer token file and CA bundle.
type ClientOptions struct {
	Kubeconfig string
	URL        string
	TokenFile  string
	CAFile     string
	UserAgent  string
}

// RESTConfig builds the client configuration. Every problem a user can fix
// (missing file, unparsable kubeconfig, no current context) is reported here,
// at start, naming the file.
func RESTConfig(o ClientOptions) (*rest.Config, error) {
	var cfg *rest.Config
	if o.Kubeconfig != "" {
		if _, err := os.Stat(o.Kubeconfig); err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		c, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", o.Kubeconfig, err)
		}
		cfg = c
	} else {
		for name, f := range map[string]string{"apiServer.tokenFile": o.TokenFile, "apiServer.caFile": o.CAFile} {
			if f == "" {
				continue
			}
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
		cfg = &rest.Config{Host: o.URL, BearerTokenFile: o.TokenFile}
		cfg.TLSClientConfig.CAFile = o.CAFile
	}
	cfg.UserAgent = o.UserAgent
	// Informers list large clusters at start; the defaults (5 QPS) would
	// stretch that over minutes.
	cfg.QPS, cfg.Burst = 50, 100
	UseProtobuf(cfg)
	return cfg, nil
}

// UseProtobuf makes cfg's clients speak protobuf, as kube-proxy and the
// kubelet do: lists and watch events take some half the bytes of JSON, for
// every agent of a fleet. Discovery stays JSON (client-go's choice).
func UseProtobuf(cfg *rest.Config) {
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
}

// NewClient returns a clientset for cfg.
func NewClient(cfg *rest.Config) (kubernetes.Interface, error) {
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return c, nil
}

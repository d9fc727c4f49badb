# Rendered by `labctl terraform render` from ../clusters.json. Do not edit: change clusters.json and render again;
# `labctl terraform check` fails while this folder differs from what clusters.json renders.

output "kubeconfigs" {
  description = "Each cluster's kubeconfig file (written by its init step)."
  value = {
    platform = abspath("${path.module}/../.labctl/kubeconfig/platform.yaml")
    dev      = abspath("${path.module}/../.labctl/kubeconfig/dev.yaml")
    staging  = abspath("${path.module}/../.labctl/kubeconfig/staging.yaml")
    prod     = abspath("${path.module}/../.labctl/kubeconfig/prod.yaml")
  }
}

output "merged_kubeconfig" {
  description = "One kubeconfig with a context per cluster."
  value       = abspath("${path.module}/../.labctl/kubeconfig/merged.yaml")
}

output "contexts" {
  description = "Each cluster's context name in the kubeconfigs."
  value = {
    platform = "labctl-platform"
    dev      = "labctl-dev"
    staging  = "labctl-staging"
    prod     = "labctl-prod"
  }
}

output "stack_urls" {
  description = "Each stack's URLs by cluster; {address} is any of the cluster's node addresses (`labctl status` shows them)."
  value = {
    platform = {
      monitoring = {
        grafana      = "http://{address}:30300/"
        alertmanager = "http://{address}:30903/"
      }
      argocd = {
        argocd = "http://{address}:30800/"
      }
      jenkins = {
        jenkins = "http://{address}:30900/"
      }
      backup = {
        minio-console = "http://{address}:30901/"
      }
      registry = {
        registry = "http://{address}:30500/v2/_catalog"
      }
    }
    dev = {
      hpa-demo = {
        nginx    = "http://{address}:30080/"
        keycloak = "http://{address}:30880/"
      }
      istio = {
        istio-gateway = "http://{address}:31380/"
      }
    }
    staging = {}
    prod    = {}
  }
}
